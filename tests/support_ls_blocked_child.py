"""A labelwatch whose Label Studio port answers webhooks but whose scoring never finishes.

Run as ``python support_ls_blocked_child.py SETTINGS_JSON``: the Label Studio HTTP
port of :mod:`labelwatch.labelstudio.http`, built as ``labelwatch serve`` builds
it (real outbox, default model, write-back worker), except that every scoring
call blocks. Prints ``listening on 127.0.0.1:PORT`` and then waits to be killed
(the kill -9 test of test_label_studio_live.py).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from labelwatch.config import Settings
from labelwatch.domain import LabeledExample, ScoredBatch
from labelwatch.engine import Engine
from labelwatch.labelstudio.http import from_settings
from labelwatch.scoring import FilterBy

PATH_FIELDS = ("data_dir", "ls_webhook_secret_file", "label_studio_token_file")


def main(raw: str) -> None:
    values = json.loads(raw)
    for name in PATH_FIELDS:
        values[name] = Path(values[name])
    if values.get("filter_by") is not None:
        values["filter_by"] = FilterBy(values["filter_by"])
    settings = Settings(**values)
    never = threading.Event()

    class BlockedEngine(Engine):
        """The real engine (outbox, default model), except that scoring never finishes."""

        def score(
            self, examples: Sequence[LabeledExample], *, deadline: float | None = None
        ) -> ScoredBatch:
            never.wait()
            return super().score(examples, deadline=deadline)

    engine = BlockedEngine(settings)
    http = from_settings(engine.settings, engine, os.environ)
    http.start()
    print(f"listening on 127.0.0.1:{http.port}", flush=True)
    never.wait()


if __name__ == "__main__":
    main(sys.argv[1])
