"""Connect a Label Studio project to a running labelwatch: webhook + ML backend.

:func:`connect` is idempotent: a webhook or ML backend already pointing at
labelwatch is updated, not duplicated. It returns one line per thing it did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

from labelwatch.labelstudio.client import LabelStudioClient
from labelwatch.labelstudio.http import BASIC_AUTH_USER, SECRET_HEADER
from labelwatch.labelstudio.webhook import WEBHOOK_ACTIONS, ProjectMapping


def labeling_config(class_names: Sequence[str], mapping: ProjectMapping) -> str:
    """A text + multi-label Choices config over ``class_names``.

    >>> print(labeling_config(["a"], ProjectMapping()).splitlines()[3])
        <Choice value="a"/>
    """
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in class_names)
    return (
        "<View>\n"
        f'  <Text name="text" value="${mapping.text_key}"/>\n'
        f'  <Choices name={quoteattr(mapping.choices_name)} toName="text" choice="multiple">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>"
    )


@dataclass(frozen=True)
class Connection:
    """What :func:`connect` set up."""

    project_id: int
    webhook_id: int
    ml_backend_id: int
    done: tuple[str, ...]  # human-readable lines


def _rows(answer: Any) -> list[dict[str, Any]]:
    rows = answer.get("results", []) if isinstance(answer, dict) else answer or []
    return [r for r in rows if isinstance(r, dict)]


def connect(
    client: LabelStudioClient,
    *,
    labelwatch_url: str,
    secret: str,
    project_id: int | None,
    class_names: Sequence[str],
    mapping: ProjectMapping,
    project_title: str = "labelwatch",
) -> Connection:
    """Register labelwatch's webhook and ML backend on a project (created when ``project_id``
    is None). Raises :class:`LabelStudioError` when Label Studio refuses a step.
    """
    done: list[str] = []
    base = labelwatch_url.rstrip("/")
    if project_id is None:
        created = client.request(
            "POST",
            "/api/projects",
            {"title": project_title, "label_config": labeling_config(class_names, mapping)},
        )
        project_id = int(created["id"])
        done.append(
            f"created project {project_id} {project_title!r} with {len(class_names)} choices"
        )
    else:
        project = client.request("GET", f"/api/projects/{project_id}")
        done.append(f"found project {project_id} {project.get('title')!r}")
    hook_url = base + "/webhook"
    actions = sorted(WEBHOOK_ACTIONS)
    hook: dict[str, Any] = {
        "project": project_id,
        "url": hook_url,
        "send_payload": True,
        "send_for_all_actions": False,
        "actions": actions,
        "headers": {SECRET_HEADER: secret},
        "is_active": True,
    }
    hooks = _rows(client.request("GET", f"/api/webhooks/?project={project_id}"))
    same = [h for h in hooks if h.get("url") == hook_url]
    if same:
        webhook_id = int(same[0]["id"])
        client.request("PATCH", f"/api/webhooks/{webhook_id}/", hook)
        done.append(f"updated webhook {webhook_id} -> {hook_url} ({', '.join(actions)})")
    else:
        webhook_id = int(client.request("POST", "/api/webhooks/", hook)["id"])
        done.append(f"registered webhook {webhook_id} -> {hook_url} ({', '.join(actions)})")
    # Label Studio sends these as HTTP Basic auth on /setup and /predict, which check them
    auth = {
        "auth_method": "BASIC_AUTH",
        "basic_auth_user": BASIC_AUTH_USER,
        "basic_auth_pass": secret,
    }
    backends = _rows(client.request("GET", f"/api/ml/?project={project_id}"))
    mine = [b for b in backends if str(b.get("url", "")).rstrip("/") == base]
    if mine:
        ml_id = int(mine[0]["id"])
        # Label Studio 1.23 answers 500 to a PATCH without "project"
        client.request("PATCH", f"/api/ml/{ml_id}", {"url": base, "project": project_id, **auth})
        done.append(f"updated ML backend {ml_id} -> {base} (basic auth with the secret)")
    else:
        ml = client.request(
            "POST",
            "/api/ml/",
            {
                "url": base,
                "project": project_id,
                "title": "labelwatch",
                "is_interactive": False,
                **auth,
            },
        )
        ml_id = int(ml["id"])
        done.append(
            f"connected ML backend {ml_id} -> {base} (pre-annotation via /predict, "
            "basic auth with the secret)"
        )
    return Connection(project_id, webhook_id, ml_id, tuple(done))
