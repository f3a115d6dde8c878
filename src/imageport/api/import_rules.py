"""What ``POST /import`` checks besides the image, and what it records on the task, as Glance.

* **Stores** (Glance's ``get_stores_from_request``): ``all_stores`` with ``stores`` or the
  ``X-Image-Meta-Store`` header, or both of those, is 400; a store that is not configured is
  409 (Glance answers Conflict for an unknown store here, where ``PUT /file`` says 400).
* **web-download URL**: checked at the call, as Glance filters it before creating the task
  (400 "URI for web-download does not pass filtering"): imageport's URL policy in full —
  scheme, port, userinfo, host notation, and every address the host resolves to (resolved
  once, within :data:`RESOLVE_TIMEOUT`). The worker checks it again before connecting.
* **The task**, as Glance records it: owned by the caller's project, with the request in
  ``input.import_req`` and the target stores in ``input.backend``, and the caller's
  ``user_id`` and the ``request_id`` (shown by the tasks API).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from typing import Any

from imageport.api.auth import Identity
from imageport.api.deps import ApiContext
from imageport.api.errors import ApiError, bad_request, conflict
from imageport.errors import InvalidRequest, SourceNotFound, SourceUnavailable
from imageport.pipeline import UrlPolicy, system_resolver, vet
from imageport.records import Task
from imageport.records.serialize import TASK_REQUEST_ID, TASK_USER_ID

#: Seconds the host of a web-download URL may take to resolve during ``POST /import``.
RESOLVE_TIMEOUT = 10.0


def chosen_stores(
    ctx: ApiContext, body: dict[str, Any], header: str | None
) -> tuple[tuple[str, ...], bool]:
    """The target stores named by the request (empty: the default store), and ``all_stores``.

    Raises:
        ApiError: 400 for a malformed or contradictory choice, 409 for an unknown store.
    """
    stores, all_stores = body.get("stores"), body.get("all_stores", False)
    if stores is not None and (
        not isinstance(stores, list) or not all(isinstance(s, str) for s in stores)
    ):
        raise bad_request("stores must be a list of store ids")
    if not isinstance(all_stores, bool):
        raise bad_request("'all_stores' must be boolean value only")
    if all_stores and (stores is not None or header):
        raise bad_request(
            "All_stores parameter can't be used with x-image-meta-store header or stores parameter"
        )
    if stores is not None and header:
        raise bad_request("Stores parameter and x-image-meta-store header can't be both specified")
    chosen = tuple(stores or ([header] if header else []))
    if all_stores:
        chosen = tuple(s for s, store in ctx.services.stores.items() if not store.read_only)
    unknown = [s for s in chosen if s not in ctx.services.stores]
    if unknown:
        raise conflict(
            f"Store for identifier {', '.join(unknown)} not found; configured stores: "
            f"{', '.join(ctx.services.stores)}",
            code="unknown_store",
        )
    return chosen, all_stores


def check_web_download_uri(ctx: ApiContext, uri: str) -> None:
    """Refuse a URL web-download may not fetch, before any task exists (400, or 503).

    Raises:
        ApiError: 400 naming the rule that refused (the ``url_*`` error codes), or 503 when the
            host could not be resolved in time.
    """
    try:
        vet(uri, UrlPolicy.from_settings(ctx.settings), _bounded_resolver(RESOLVE_TIMEOUT))
    except (InvalidRequest, SourceNotFound) as exc:
        raise ApiError(
            400,
            f"URI for web-download does not pass filtering: {uri} ({exc.message})",
            code=exc.code,
        ) from exc
    except SourceUnavailable as exc:
        raise ApiError(503, exc.message, code=exc.code) from exc


def _bounded_resolver(timeout: float) -> Any:  # noqa: ANN401 - the urlpolicy Resolver type
    """The system resolver, given up on after ``timeout`` seconds (a temporary failure)."""

    def resolve(host: str, port: int) -> Sequence[str]:
        answer: list[Sequence[str] | OSError] = []

        def work() -> None:
            try:
                answer.append(system_resolver(host, port))
            except OSError as exc:
                answer.append(exc)

        # getaddrinfo has no timeout of its own: a daemon thread that may outlive the wait.
        thread = threading.Thread(target=work, name="resolve-web-download", daemon=True)
        thread.start()
        thread.join(timeout)
        if not answer:
            raise socket.gaierror(socket.EAI_AGAIN, f"no answer within {timeout:.0f}s")
        if isinstance(answer[0], OSError):
            raise answer[0]
        return answer[0]

    return resolve


def record_request(
    ctx: ApiContext,
    task_id: str,
    who: Identity,
    body: dict[str, Any],
    stores: Sequence[str],
    request_id: str | None,
) -> None:
    """Record on the task what Glance records: caller, request and target stores."""
    with ctx.services.db.session() as session:
        task = session.get(Task, task_id)
        if task is None:  # deleted in between (the image was deleted): nothing to record
            return
        task.owner = who.project_id
        task.input = {
            **task.input,
            "import_req": body,
            "backend": list(stores) or [ctx.settings.default_store],
            TASK_USER_ID: who.user_id,
            TASK_REQUEST_ID: request_id,
        }
