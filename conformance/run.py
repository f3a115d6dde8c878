"""Run the side-by-side check: ``python -m conformance.run`` (``make conformance`` does it).

Starts Glance (``--glance-venv``, default ``.venv-glance``), ``imageport api`` and a file server,
sends the scenario to both servers in turn, prints the requests whose answers differ (status,
body shape, or listed items) and the totals, and writes every result to ``--output``
(``build/conformance.json``). Exit status: 0 whatever the differences; 1 when the harness
itself failed (a server did not start, a request could not be sent); 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from conformance.compare import Answer, Verdict, compare, parse
from conformance.scenario import scenario
from conformance.servers import (
    FileServer,
    HarnessError,
    Server,
    start_glance,
    start_imageport,
    workspace,
)
from conformance.steps import (
    IDENTITIES,
    JSON,
    Cleanup,
    Pause,
    Req,
    Step,
    Wait,
    identity_headers,
)

REPO = Path(__file__).resolve().parent.parent
#: Seconds one request may take.
REQUEST_TIMEOUT = 60.0
#: Size of the raw test image (bytes).
RAW_SIZE = 256 * 1024
_VAR = re.compile(r"\{([A-Za-z0-9_]+)\}")
#: Statuses of a task that has not ended, and of an image an import is still writing.
_RUNNING_TASK = frozenset({"pending", "processing"})
_BUSY_IMAGE = frozenset({"importing", "saving"})


def out(line: str = "") -> None:
    """Write one line to standard output."""
    sys.stdout.write(line + "\n")


def make_blobs(directory: Path) -> dict[str, bytes]:
    """The test images: ``raw`` (patterned bytes) and ``qcow2`` (1 MiB virtual, qemu-img).

    Both are also written to ``directory``, which the file server serves.

    Raises:
        HarnessError: qemu-img is missing or failed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    raw = bytes(range(256)) * (RAW_SIZE // 256)
    (directory / "raw.img").write_bytes(raw)
    qcow2 = directory / "disk.qcow2"
    try:
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "1M"],  # noqa: S607
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise HarnessError(f"qemu-img create failed ({exc}): install qemu-utils") from exc
    return {"raw": raw, "qcow2": qcow2.read_bytes()}


class Side:
    """One server under comparison, with its own values for the scenario's placeholders."""

    def __init__(self, server: Server, files_url: str) -> None:
        self.server = server
        self.name = server.name
        self.values: dict[str, str] = {"files": files_url}
        self.client = httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT)
        del self.client.headers["accept"]  # each request says what it accepts, or nothing
        self.unresolved: set[str] = set()

    def fill(self, text: str) -> str:
        """``text`` with its ``{var}`` placeholders replaced by this server's values."""

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in self.values:
                return self.values[name]
            self.unresolved.add(name)
            return f"unresolved-{name}"

        return _VAR.sub(one, text)

    def fill_json(self, value: Any) -> Any:  # noqa: ANN401 - JSON
        """A JSON value with placeholders in its strings (keys included) replaced."""
        if isinstance(value, str):
            return self.fill(value)
        if isinstance(value, list):
            return [self.fill_json(v) for v in value]
        if isinstance(value, dict):
            return {self.fill(k): self.fill_json(v) for k, v in value.items()}
        return value

    def send(self, req: Req, blobs: dict[str, bytes]) -> tuple[Answer, dict[str, Any]]:
        """Send one request; its answer and what was sent (for the record)."""
        self.unresolved = set()
        path = self.fill(req.path)
        headers = identity_headers(req.who)
        if req.accept is not None:
            headers["Accept"] = req.accept
        headers.update({k: self.fill(v) for k, v in req.headers.items()})
        content: bytes | None = None
        if req.json is not None:
            content = json.dumps(self.fill_json(req.json)).encode()
            headers["Content-Type"] = JSON
        elif isinstance(req.data, str):
            content = blobs[req.data.removeprefix("@")]
        elif req.data is not None:
            content = req.data
        if req.content_type is not None:
            headers.pop("Content-Type", None)
            if req.content_type:
                headers["Content-Type"] = req.content_type
        began = time.monotonic()
        response = self.client.request(req.method, path, headers=headers, content=content)
        elapsed = time.monotonic() - began
        answer = parse(
            response.status_code,
            response.headers.get("content-type", ""),
            response.content,
            {k.lower(): v for k, v in response.headers.items()},
        )
        for var, where in req.save.items():
            found = _lookup(answer, where)
            if found is not None:
                self.values[var] = str(found)
        sent = {"path": path, "seconds": round(elapsed, 3)}
        if self.unresolved:
            sent["unresolved"] = sorted(self.unresolved)
        return answer, sent

    def wait(self, step: Wait) -> dict[str, Any]:
        """Poll until the image's import ended (bounded); what was seen last.

        Only reads: the image's ``os_glance_import_task`` names the running task (both
        servers set it when the import is accepted), then ``GET /v2/tasks/{id}`` until the
        task ended. Not ``GET /v2/images/{id}/tasks``: Glance writes to its database there
        (it soft-deletes expired tasks first), and a write racing the import thread's first
        write on SQLite fails that thread silently, leaving its task pending for ever.
        """
        image = self.values.get(step.image)
        if image is None:
            return {"image": step.image, "outcome": "unknown image"}
        headers = {"Accept": JSON, **identity_headers("admin")}
        deadline = time.monotonic() + step.timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            shown = self.client.get(f"/v2/images/{image}", headers=headers)
            record = shown.json() if shown.status_code == 200 else {}
            task_id = record.get("os_glance_import_task")
            task_status = None
            if task_id:
                task = self.client.get(f"/v2/tasks/{task_id}", headers=headers)
                task_status = task.json().get("status") if task.status_code == 200 else None
            last = {"image": record.get("status"), "task": task_status}
            copied = step.store is None or (
                step.store in str(record.get("stores", "")).split(",")
                or bool(record.get("os_glance_failed_import"))
            )
            if (
                copied
                and task_status not in _RUNNING_TASK
                and record.get("status") not in _BUSY_IMAGE
            ):
                return {"image": step.image, "outcome": "ended", **last}
            time.sleep(0.5)
        return {"image": step.image, "outcome": f"timed out after {step.timeout:.0f} s", **last}

    def cleanup(self, step: Cleanup) -> list[str]:
        """Delete the stray images ``step`` describes; the ids deleted."""
        headers = {"Accept": JSON, **identity_headers("admin")}
        keep = {self.values.get(var) for var in step.keep}
        listed = self.client.get(
            "/v2/images?visibility=all&member_status=all&limit=1000", headers=headers
        )
        if listed.status_code != 200:
            raise HarnessError(f"{self.name}: clean-up could not list images: {listed.text}")
        stray = [
            image["id"]
            for image in listed.json().get("images", [])
            if image.get("name") in step.names
            or (image.get("name") is None and image.get("id") not in keep)
        ]
        for image_id in stray:
            self.client.delete(f"/v2/images/{image_id}", headers=headers)
        return stray

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()


def _lookup(answer: Answer, where: str) -> Any:  # noqa: ANN401 - JSON
    if where.startswith("header:"):
        return answer.headers.get(where.removeprefix("header:").lower())
    value: Any = answer.json
    for part in where.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def run_scenario(
    glance: Side, imageport: Side, steps: list[Step], blobs: dict[str, bytes]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Send every step to both servers; the compared results and the waits' records."""
    results: list[dict[str, Any]] = []
    waits: list[dict[str, Any]] = []
    names: set[str] = set()
    for step in steps:
        if isinstance(step, Pause):
            time.sleep(step.seconds)
            continue
        if isinstance(step, Wait):
            waits.append(
                {"kind": "wait", "glance": glance.wait(step), "imageport": imageport.wait(step)}
            )
            continue
        if isinstance(step, Cleanup):
            cleaned = {"glance": glance.cleanup(step), "imageport": imageport.cleanup(step)}
            waits.append({"kind": "cleanup", **cleaned})
            continue
        if step.quiet:
            glance.send(step, blobs)
            imageport.send(step, blobs)
            continue
        if step.name in names:
            raise HarnessError(f"two steps are named {step.name!r}")
        names.add(step.name)
        if step.who not in IDENTITIES:
            raise HarnessError(f"step {step.name!r}: unknown identity {step.who!r}")
        g_answer, g_sent = glance.send(step, blobs)
        i_answer, i_sent = imageport.send(step, blobs)
        verdict = compare(g_answer, i_answer, step.check_headers)
        results.append(_record(len(results) + 1, step, g_answer, g_sent, i_answer, i_sent, verdict))
    return results, waits


def _record(
    index: int,
    step: Req,
    g_answer: Answer,
    g_sent: dict[str, Any],
    i_answer: Answer,
    i_sent: dict[str, Any],
    verdict: Verdict,
) -> dict[str, Any]:
    def side(answer: Answer, sent: dict[str, Any]) -> dict[str, Any]:
        return {
            "status": answer.status,
            "content_type": answer.content_type,
            "headers": {name: answer.headers.get(name) for name in step.check_headers},
            "shape": answer.shape,
            "items": answer.items,
            "body": answer.excerpt,
            "json": answer.json,
            **sent,
        }

    return {
        "index": index,
        "name": step.name,
        "method": step.method,
        "path": step.path,
        "who": step.who,
        "accept": step.accept,
        "glance": side(g_answer, g_sent),
        "imageport": side(i_answer, i_sent),
        **asdict(verdict),
        "imageport_500": i_answer.status >= 500,
    }


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(results: list[dict[str, Any]], *, show_all: bool) -> None:
    """The requests that differ (all with ``show_all``), one line each."""
    header = f"{'#':>3}  {'request':<38} {'method path':<52} {'G':>3} {'I':>3} st sh it  diff"
    out(header)
    out("-" * len(header))
    for r in results:
        differs = not (r["status_match"] and r["shape_match"] and r["items_match"] is not False)
        if not (differs or show_all or r["imageport_500"]):
            continue
        mark = {True: "ok", False: "XX", None: "--"}
        out(
            f"{r['index']:>3}  {_cut(r['name'], 38):<38} "
            f"{_cut(r['method'] + ' ' + r['path'], 52):<52} "
            f"{r['glance']['status']:>3} {r['imageport']['status']:>3} "
            f"{mark[r['status_match']]} {mark[r['shape_match']]} {mark[r['items_match']]}  "
            f"{_cut('; '.join(r['diff']), 160)}"
        )


def totals(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline numbers."""
    count = len(results)
    with_items = [r for r in results if r["items_match"] is not None]

    def pct(n: int, of: int) -> float:
        return round(100.0 * n / of, 1) if of else 100.0

    status = sum(r["status_match"] for r in results)
    shape = sum(r["shape_match"] for r in results)
    items = sum(bool(r["items_match"]) for r in with_items)
    return {
        "requests": count,
        "status_match": status,
        "status_match_percent": pct(status, count),
        "shape_match": shape,
        "shape_match_percent": pct(shape, count),
        "items_compared": len(with_items),
        "items_match": items,
        "items_match_percent": pct(items, len(with_items)),
        "imageport_500": sum(r["imageport_500"] for r in results),
        "glance_500": sum(r["glance"]["status"] >= 500 for r in results),
        "goal_met": pct(status, count) >= 98.0
        and pct(shape, count) >= 90.0
        and not any(r["imageport_500"] for r in results),
    }


def crash_details(results: list[dict[str, Any]], log: Path) -> None:
    """Attach the server log's lines about each imageport 500 (found by its reference)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return
    lines = text.splitlines()
    for r in results:
        if not r["imageport_500"]:
            continue
        found = re.search(r"[0-9a-f]{32}", r["imageport"]["body"])
        if not found:
            continue
        at = next((i for i, line in enumerate(lines) if found.group(0) in line), None)
        if at is not None:
            r["imageport"]["log"] = lines[at : at + 40]


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module doc."""
    parser = argparse.ArgumentParser(prog="python -m conformance.run", description=__doc__)
    parser.add_argument("--glance-venv", type=Path, default=REPO / ".venv-glance")
    parser.add_argument("--output", type=Path, default=REPO / "build" / "conformance.json")
    parser.add_argument("--all", action="store_true", help="print every request, not only diffs")
    parser.add_argument("--keep", action="store_true", help="keep the servers' temp directory")
    args = parser.parse_args(argv)
    steps = scenario()
    began = time.monotonic()
    try:
        with workspace(keep=args.keep) as work:
            blobs = make_blobs(work / "files")
            with FileServer(work / "files") as files:
                results, waits, servers = _run_servers(
                    args.glance_venv, work, files, steps, blobs, args.output
                )
            if args.keep:
                out(f"servers' files kept in {work}")
    except (HarnessError, httpx.HTTPError) as exc:
        sys.stderr.write(f"conformance: harness error: {exc}\n")
        return 1
    summary = totals(results)
    summary["seconds"] = round(time.monotonic() - began, 1)
    summary["server_start_seconds"] = servers
    print_table(results, show_all=args.all)
    out()
    out(
        f"{summary['requests']} requests: status {summary['status_match_percent']}% "
        f"({summary['status_match']}), shape {summary['shape_match_percent']}% "
        f"({summary['shape_match']}), items {summary['items_match_percent']}% "
        f"({summary['items_match']}/{summary['items_compared']}), "
        f"imageport 500s {summary['imageport_500']}, glance 500s {summary['glance_500']}; "
        f"goal (98% status, 90% shape, no 500) {'met' if summary['goal_met'] else 'NOT met'}; "
        f"{summary['seconds']} s"
    )
    slow = [
        w
        for w in waits
        if w["kind"] == "wait" and "timed out" in w["glance"]["outcome"] + w["imageport"]["outcome"]
    ]
    for w in slow:
        out(f"harness warning: an import did not end, later answers may differ for it: {w}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {"summary": summary, "waits": waits, "results": results}
    args.output.write_text(json.dumps(document, indent=1, default=str) + "\n")
    digest = hashlib.sha256(args.output.read_bytes()).hexdigest()[:12]
    out(f"full results: {args.output} (sha256 {digest}); server logs beside it")
    return 0


def _run_servers(
    venv: Path,
    work: Path,
    files: FileServer,
    steps: list[Step],
    blobs: dict[str, bytes],
    output: Path,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    glance_server = start_glance(venv, work / "glance", files.port)
    try:
        imageport_server = start_imageport(work / "imageport", files.port)
    except BaseException:
        glance_server.stop()
        raise
    glance, imageport = Side(glance_server, files.url), Side(imageport_server, files.url)
    try:
        results, waits = run_scenario(glance, imageport, steps, blobs)
    finally:
        glance.close()
        imageport.close()
        glance_server.stop()
        imageport_server.stop()
    crash_details(results, imageport_server.log)
    logs = output.parent
    logs.mkdir(parents=True, exist_ok=True)
    for server, log in (
        (glance_server, glance_server.workdir / "glance-api.log"),
        (imageport_server, imageport_server.log),
    ):
        if log.is_file():
            shutil.copyfile(log, logs / f"conformance-{server.name}.log")
    starts = {
        "glance": round(glance_server.start_seconds, 1),
        "imageport": round(imageport_server.start_seconds, 1),
    }
    return results, waits, starts


if __name__ == "__main__":
    sys.exit(main())
