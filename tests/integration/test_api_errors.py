"""An unexpected exception is a generic 500 for the client and a traceback in the server log."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from api_support import api_client, api_server

#: Words of the exception that must never reach a client: its class, module, text, traceback.
LEAKS = ("OperationalError", "sqlite3", "no such table", "image_members", "Traceback", "SELECT")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    with api_server(root / "data") as srv:
        yield srv


@contextlib.contextmanager
def table_hidden(database, table):
    """Rename a table under the running server, so its next query crashes; then put it back."""
    with sqlite3.connect(database) as conn:
        conn.execute(f"ALTER TABLE {table} RENAME TO {table}_hidden")
    try:
        yield
    finally:
        with sqlite3.connect(database) as conn:
            conn.execute(f"ALTER TABLE {table}_hidden RENAME TO {table}")


def _log_holds(server, text, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in Path(server.log.name).read_text(errors="replace"):
            return True
        time.sleep(0.1)
    return False


def test_an_unexpected_exception_is_a_generic_500(server):
    with api_client(server.url, timeout=60) as http:
        image = http.post("/v2/images", json={"name": "e"}).json()
        url = f"/v2/images/{image['id']}/members"
        assert http.get(url).status_code == 200

        with table_hidden(server.data_dir / "imageport.db", "image_members"):
            answer = http.get(url)

        assert answer.status_code == 500, answer.text
        body = answer.json()
        assert set(body) == {"code", "title", "message", "error_code"}  # Glance's shape
        assert body["code"] == "500 Internal Server Error"
        assert body["title"] == "Internal Server Error"
        assert body["error_code"] == "internal_error"
        for leak in LEAKS:
            assert leak not in answer.text, leak
        assert "try again" in body["message"]
        reference = re.search(r"reference: ([0-9a-f]{32})", body["message"])
        assert reference, body["message"]
        # The details are in the server log, under the reference the client was given.
        assert _log_holds(server, reference.group(1))
        assert _log_holds(server, "no such table: image_members")
    # The server itself is fine. A new connection: uvicorn closes the one a crash went through.
    assert httpx.get(f"{server.url}{url}", timeout=60).status_code == 200


@pytest.mark.parametrize(
    ("accept", "media", "start"),
    [
        # webob offers HTML and JSON (HTML wins a tie) and falls back to text/plain.
        (None, "text/plain", "404 Not Found\n\nno image found"),
        ("", "text/plain", "404 Not Found\n\nno image found"),
        ("*/*", "text/html", "<html>"),
        ("text/*", "text/html", "<html>"),
        ("foo", "text/html", "<html>"),  # an invalid header accepts everything
        ("application/json;q=0.5, */*", "text/html", "<html>"),
        ("text/plain, application/json", "application/json", '{"code": "404 Not Found"'),
        ("text/html;q=0, */*", "application/json", '{"code": "404 Not Found"'),
        ("text/plain", "text/plain", "404 Not Found\n\nno image found"),
        ("*/*;q=0", "text/plain", "404 Not Found\n\nno image found"),
        ("application/octet-stream", "text/plain", "404 Not Found\n\nno image found"),
        ("text/html", "text/html", "<html>"),
        ("application/json", "application/json", '{"code": "404 Not Found"'),
        ("application/*", "application/json", '{"code": "404 Not Found"'),
        ("application/json, */*;q=0.1", "application/json", '{"code": "404 Not Found"'),
    ],
)
def test_errors_come_in_the_media_type_glance_would_answer(server, accept, media, start):
    headers = {} if accept is None else {"Accept": accept}
    missing = "/v2/images/00000000-0000-4000-8000-000000000000"
    with httpx.Client(base_url=server.url, timeout=60) as http:
        if accept is None:
            http.headers.pop("Accept")  # httpx sends */* unless told not to
        answer = http.get(missing, headers=headers)
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith(media)
    assert answer.headers["x-imageport-error-code"] == "not_found"
    assert answer.text.startswith(start)
