"""An API that holds: idle uploads neither stall other requests nor stay forever (issue 13).

Every test runs a real ``imageport api`` and opens real sockets on 127.0.0.1 that send the
head of a ``PUT /stage`` with a large ``Content-Length``, 1 KiB of body, and then nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest
from api_support import CONFIRMED, OCTETS, TRUSTED_ADMIN, api_client, api_server, wait_status

IDLE_UPLOADS = 100  # idle upload connections held open while the API must keep answering
PROMPT = 5.0  # seconds within which a request must be answered while uploads idle
SETTLE = 30.0  # seconds a bounded wait for the server to catch up may last
DECLARED = 1024**3  # the Content-Length an idle upload announces
FIRST_PIECE = b"\0" * 1024  # what it sends before going quiet
SMALL = os.urandom(256 * 1024)  # a normal upload's data

pytestmark = pytest.mark.timeout(300)


def _create(client: httpx.Client, count: int, headers: dict[str, str] | None = None) -> list[str]:
    fields = {"disk_format": "raw", "container_format": "bare"}
    ids = []
    for _ in range(count):
        answer = client.post("/v2/images", json=fields, headers=headers)
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    return ids


def _idle_upload(port: int, image_id: str, headers: dict[str, str] | None = None) -> socket.socket:
    """Open ``PUT /stage``, send its head and 1 KiB of a 1 GiB body, and leave it idle."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=SETTLE)
    lines = [
        f"PUT /v2/images/{image_id}/stage HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Accept: application/json",  # errors in Glance's JSON shape, not text
        "Content-Type: application/octet-stream",
        f"Content-Length: {DECLARED}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + FIRST_PIECE)
    return sock


def _response(sock: socket.socket, timeout: float) -> tuple[int, dict]:
    """Read one response (status, JSON body) from a raw socket, within ``timeout`` seconds."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in data or len(data) < _expected_length(data):
        if time.monotonic() > deadline:
            raise AssertionError(f"no complete response within {timeout} s: {data!r}")
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else {}


def _expected_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(data)


def _statuses(client: httpx.Client, ids: list[str], headers: dict[str, str] | None = None) -> set:
    return {client.get(f"/v2/images/{i}", headers=headers).json()["status"] for i in ids}


def _wait_statuses(client, ids, wanted, headers=None, timeout=SETTLE) -> None:
    """Bounded wait until every image in ``ids`` has the status ``wanted``."""
    deadline = time.monotonic() + timeout
    seen: set = set()
    while time.monotonic() < deadline:
        seen = _statuses(client, ids, headers)
        if seen == {wanted}:
            return
        time.sleep(0.2)
    raise AssertionError(f"images are {seen}, not all {wanted}")


def _timed(call):
    started = time.monotonic()
    answer = call()
    return answer, time.monotonic() - started


@contextlib.contextmanager
def _closing(socks: list[socket.socket]):
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def test_the_api_answers_while_100_uploads_idle(tmp_path):
    with (
        api_server(tmp_path / "data") as server,
        api_client(server.url, timeout=PROMPT) as client,
    ):
        *idle_ids, normal_id = _create(client, IDLE_UPLOADS + 1)
        with _closing([_idle_upload(server.port, i) for i in idle_ids]):
            _wait_statuses(client, idle_ids, "uploading")
            # More idle uploads than anyio's 40 default threads, and the API still answers.
            health, took_health = _timed(lambda: client.get("/healthz"))
            listed, took_list = _timed(lambda: client.get("/v2/images", params={"limit": 500}))
            staged, took_stage = _timed(
                lambda: client.put(f"/v2/images/{normal_id}/stage", content=SMALL, headers=OCTETS)
            )
            method = {"method": {"name": "glance-direct"}}
            imported = client.post(f"/v2/images/{normal_id}/import", json=method)
            assert health.status_code == 200
            assert listed.status_code == 200
            assert len(listed.json()["images"]) == IDLE_UPLOADS + 1
            assert staged.status_code == 204, staged.text
            assert imported.status_code == 202, imported.text
            assert max(took_health, took_list, took_stage) < PROMPT
            assert wait_status(client, normal_id, "active")["size"] == len(SMALL)
        # The clients went away: every interrupted upload left its image queued, nothing staged.
        _wait_statuses(client, idle_ids, "queued")
        uploads = tmp_path / "data" / "staging" / "uploads"
        assert not [p for p in uploads.glob("*") if p.name in idle_ids]


def test_stalled_bodies_are_dropped_after_client_socket_timeout(tmp_path):
    with (
        api_server(tmp_path / "data", client_socket_timeout="2") as server,
        api_client(server.url, timeout=PROMPT) as client,
    ):
        ids = _create(client, 10)
        started = time.monotonic()
        with _closing([_idle_upload(server.port, i) for i in ids]) as socks:
            answers = [_response(sock, SETTLE) for sock in socks]
            waited = time.monotonic() - started
            # Nothing more is read: the server closed each connection after its answer.
            assert all(sock.recv(1) == b"" for sock in socks)
        assert {status for status, _ in answers} == {408}
        assert {body["error_code"] for _, body in answers} == {"request_timeout"}
        assert 2 <= waited < 2 + SETTLE
        _wait_statuses(client, ids, "queued")
        staged = tmp_path / "data" / "staging" / "uploads"
        assert not [p for p in staged.glob("*") if p.name in ids]
        # A JSON body that stalls is dropped the same way.
        with _closing([socket.create_connection(("127.0.0.1", server.port), timeout=SETTLE)]) as (
            sock,
        ):
            head = (
                "POST /v2/images HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n"
                "Content-Type: application/json\r\n"
                "Content-Length: 100\r\n\r\n{"
            )
            sock.sendall(head.encode())
            status, body = _response(sock, SETTLE)
        assert (status, body["error_code"]) == (408, "request_timeout")
        # The images can be uploaded again, and the server still serves.
        assert (
            client.put(f"/v2/images/{ids[0]}/stage", content=SMALL, headers=OCTETS).status_code
            == 204
        )


def test_request_heads_are_bounded_in_size_and_time(tmp_path):
    with api_server(tmp_path / "data", client_socket_timeout="2") as server:

        def send_head(head: bytes) -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=SETTLE)
            sock.sendall(head)
            return sock

        start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n"
        # Room for a Keystone token and a proxy's service catalog: 60 KiB of headers is served.
        big = b"".join(b"X-Big-%d: %s\r\n" % (i, b"a" * 1000) for i in range(60))
        with _closing([send_head(start + big + b"\r\n")]) as (sock,):
            assert _response(sock, SETTLE)[0] == 200
        # Past 64 KiB, even in a single header line that never ends: 431, and closed.
        with _closing([send_head(start + b"X-Endless: " + b"a" * 128 * 1024)]) as (sock,):
            status, body = _response(sock, SETTLE)
            assert (status, body["error_code"]) == (431, "request_head_too_large")
            assert _closed(sock)
        # A head that trickles in is dropped client_socket_timeout after its first byte.
        started = time.monotonic()
        with _closing([send_head(start)]) as (sock,):
            for _ in range(5):
                time.sleep(0.5)
                with contextlib.suppress(OSError):  # the server may have answered already
                    sock.sendall(b"X")
            status, body = _response(sock, SETTLE)
            waited = time.monotonic() - started
            assert (status, body["error_code"]) == (408, "request_timeout")
            assert _closed(sock)
        assert 2 <= waited < 2 + SETTLE
        # Keep-alive requests each get their own allowance, and the server still serves.
        with api_client(server.url, timeout=PROMPT) as client:
            for _ in range(3):
                assert client.get("/healthz", headers={"X-Big": "a" * 50_000}).status_code == 200
                time.sleep(1.5)


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (a reset too: it may close with bytes unread)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _as(project: str) -> dict[str, str]:
    return {**CONFIRMED, "X-Project-Id": project, "X-Roles": "member,reader"}


def test_upload_caps_refuse_instead_of_stalling(tmp_path):
    settings = {
        "auth_strategy": "trusted-proxy",
        "max_concurrent_uploads": "5",
        "max_concurrent_uploads_per_project": "2",
    }
    with (
        api_server(tmp_path / "data", **settings) as server,
        api_client(server.url, timeout=PROMPT) as client,
    ):
        alpha, beta, gamma = _as("alpha"), _as("beta"), _as("gamma")
        a_ids, b_ids = _create(client, 3, alpha), _create(client, 3, beta)
        g_ids = _create(client, 1, gamma)
        admin_ids = _create(client, 1, TRUSTED_ADMIN)
        with _closing([_idle_upload(server.port, i, alpha) for i in a_ids[:2]]) as a_socks:
            _wait_statuses(client, a_ids[:2], "uploading", TRUSTED_ADMIN)
            # The project's third upload: 413, and its image is left as it was.
            with _closing([_idle_upload(server.port, a_ids[2], alpha)]) as (third,):
                status, body = _response(third, SETTLE)
            assert (status, body["error_code"]) == (413, "too_many_uploads")
            assert _statuses(client, [a_ids[2]], alpha) == {"queued"}
            # Another project's upload proceeds meanwhile.
            done = client.put(
                f"/v2/images/{b_ids[2]}/stage", content=SMALL, headers={**beta, **OCTETS}
            )
            assert done.status_code == 204, done.text
            # Five in flight (alpha 2, beta 2, gamma 1): the sixth, of any project, is 503.
            others = [_idle_upload(server.port, i, beta) for i in b_ids[:2]]
            others.append(_idle_upload(server.port, g_ids[0], gamma))
            with _closing(others):
                _wait_statuses(client, b_ids[:2] + g_ids, "uploading", TRUSTED_ADMIN)
                with _closing([_idle_upload(server.port, admin_ids[0], TRUSTED_ADMIN)]) as (sixth,):
                    status, body = _response(sixth, SETTLE)
                assert (status, body["error_code"]) == (503, "too_many_uploads")
                # A slot freed (an uploader went away) is a slot for the next upload.
                a_socks[0].close()
                _wait_statuses(client, [a_ids[0]], "queued", TRUSTED_ADMIN)
                retried = client.put(
                    f"/v2/images/{admin_ids[0]}/stage",
                    content=SMALL,
                    headers={**TRUSTED_ADMIN, **OCTETS},
                )
                assert retried.status_code == 204, retried.text


def _gated_qemu(folder: Path) -> tuple[Path, Path]:
    """A qemu-img that waits for a gate file to exist: imports hang until the test opens it."""
    gate, script = folder / "gate", folder / "qemu-img"
    real = shutil.which("qemu-img")
    assert real is not None
    script.write_text(f'#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.05; done\nexec {real} "$@"\n')
    script.chmod(0o755)
    return script, gate


def test_put_file_waits_for_its_import_without_holding_a_thread(tmp_path):
    """More PUT /file calls than anyio's 40 default threads wait for their imports at once."""
    waiting = 45
    qemu, gate = _gated_qemu(tmp_path)
    settings = {"qemu_img_path": str(qemu), "qemu_info_timeout_seconds": "300"}
    with (
        api_server(tmp_path / "data", **settings) as server,
        api_client(server.url, timeout=PROMPT) as client,
    ):
        ids = _create(client, waiting)
        socks = []
        for image_id in ids:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=SETTLE)
            head = (
                f"PUT /v2/images/{image_id}/file HTTP/1.1\r\nHost: x\r\n"
                "Accept: application/json\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {len(SMALL)}\r\n\r\n"
            )
            sock.sendall(head.encode() + SMALL)
            socks.append(sock)
        with _closing(socks):
            # Every upload is in and its import queued behind the gate: all wait at once.
            _wait_tasks(client, ids)
            health, took = _timed(lambda: client.get("/healthz"))
            listed = client.get("/v2/images", params={"status": "saving", "limit": 100})
            assert health.status_code == 200
            assert took < PROMPT
            assert len(listed.json()["images"]) == waiting
            gate.touch()
            answers = [_response(sock, 240) for sock in socks]
        assert {status for status, _ in answers} == {204}
        _wait_statuses(client, ids, "active")


def _wait_tasks(client: httpx.Client, ids: list[str]) -> None:
    """Bounded wait until every image in ``ids`` has an import task.

    Read from the image's ``os_glance_import_task``: a PUT /file task is not listed by the
    Glance task APIs (Glance's upload has none).
    """
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        images = [client.get(f"/v2/images/{i}").json() for i in ids]
        if all(image.get("os_glance_import_task") for image in images):
            return
        time.sleep(0.2)
    raise AssertionError("the uploads did not all reach their import")


def test_staging_dir_is_where_the_tests_look(tmp_path):
    """The tests above look for leftovers in <data_dir>/staging/uploads: make sure it is used."""
    with (
        api_server(tmp_path / "data") as server,
        api_client(server.url, timeout=PROMPT) as client,
    ):
        (image_id,) = _create(client, 1)
        assert (
            client.put(f"/v2/images/{image_id}/stage", content=SMALL, headers=OCTETS).status_code
            == 204
        )
        assert (Path(tmp_path) / "data" / "staging" / "uploads" / image_id).is_dir()
