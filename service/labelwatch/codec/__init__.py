"""Codecs: what a transport received -> validated domain examples, and results back out.

Every transport decodes into :class:`ExampleFields`, which one
:class:`ExampleDecoder` checks against the loaded model (same rules, same
messages naming example id and field, whatever the transport):

- :mod:`labelwatch.codec.proto`: ``labelwatch.v1`` protobuf (gRPC, and protobuf
  NATS messages), and scored batches -> ``ScoreResponse``;
- :mod:`labelwatch.codec.mapping`: JSON objects (NATS JSON messages, the CLI's JSONL);
- :mod:`labelwatch.codec.labelstudio`: Label Studio annotations.

No transport code here: a codec takes and returns values.
"""

from __future__ import annotations

from labelwatch.codec.fields import DEFAULT_LIMITS, ExampleDecoder, ExampleFields, InputField

__all__ = ["DEFAULT_LIMITS", "ExampleDecoder", "ExampleFields", "InputField"]
