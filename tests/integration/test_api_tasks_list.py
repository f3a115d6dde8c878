"""``GET /v2/tasks`` over HTTP: who sees what, filters, sorting, marker paging, errors, stubs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
from api_support import TRUSTED_ADMIN, api_client, api_server

from imageport.records import TaskStatus, repository

ADMIN = {"X-Project-Id": "ops", "X-Roles": "admin"}
ALICE = {"X-Project-Id": "alice", "X-Roles": "member"}
BOB = {"X-Project-Id": "bob", "X-Roles": "member"}
NO_PROJECT = {"X-Project-Id": "", "X-Roles": "member"}  # roles but no project: owns nothing
STUB_FIELDS = {
    "id", "type", "status", "owner", "expires_at", "created_at", "updated_at", "self", "schema",
    "error_code",
}  # fmt: skip
START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
#: The seeded tasks: (owner, type, status). Every two share a created_at, so ``id`` must
#: break ties.
SEED = [
    ("alice", "api_image_import", "pending"),
    ("alice", "api_image_import", "processing"),
    ("alice", "api_image_import", "success"),
    ("alice", "import", "failure"),
    ("alice", "api_image_import", "success"),
    ("alice", "api_image_import", "pending"),
    ("alice", "import", "success"),
    ("bob", "api_image_import", "pending"),
    ("bob", "api_image_import", "failure"),
    ("bob", "import", "success"),
    (None, "api_image_import", "processing"),
]
#: The edges each seeded status is reached by, from ``pending``.
PATHS = {
    "pending": [],
    "processing": [("pending", "processing")],
    "success": [("pending", "processing"), ("processing", "success")],
    "failure": [("pending", "processing"), ("processing", "failure")],
}


@dataclass(frozen=True)
class Seeded:
    """A seeded task, as the test expects to see it."""

    id: str
    owner: str | None
    type: str
    status: str
    created_at: datetime


def _create(database, owner, task_type, status, created_at, task_input=None) -> Seeded:
    with database.session() as session:
        image = repository.create_image(
            session, name="t", disk_format="raw", container_format="bare", owner=owner
        )
        task = repository.create_task(
            session, image_id=image.id, input=task_input or {}, owner=owner, task_type=task_type
        )
        for old, new in PATHS[status]:
            repository.set_task_status(
                session, task.id, expected=TaskStatus(old), new=TaskStatus(new)
            )
        task.created_at = created_at
        return Seeded(task.id, owner, task_type, status, created_at)


def _newest_first(tasks):
    return [t.id for t in sorted(tasks, key=lambda t: (t.created_at, t.id), reverse=True)]


@pytest.fixture
def seeded(database):
    return [
        _create(database, owner, kind, status, START + timedelta(minutes=i // 2))
        for i, (owner, kind, status) in enumerate(SEED)
    ]


@pytest.fixture
def http(database_url, tmp_path):
    # Glance's tasks_api_access is for administrators; an operator's policy file opens the
    # tasks API to members here, so what each project sees can be tested.
    policy = tmp_path / "policy.yaml"
    policy.write_text('tasks_api_access: "role:member"\n')
    with (
        api_server(
            tmp_path / "data",
            database_url=database_url,
            auth_strategy="trusted-proxy",
            policy_file=str(policy),
        ) as server,
        api_client(server.url, timeout=60, headers=TRUSTED_ADMIN) as client,
    ):
        yield client


def _ids(http, headers, **params):
    response = http.get("/v2/tasks", params={"limit": 1000, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return [t["id"] for t in response.json()["tasks"]]


def test_admin_sees_every_task_and_projects_their_own(http, seeded):
    everything = _newest_first(seeded)
    assert _ids(http, ADMIN) == everything
    assert _ids(http, {}) == everything  # anonymous acts as admin (see api/auth.py)
    assert _ids(http, ALICE) == _newest_first([t for t in seeded if t.owner == "alice"])
    assert _ids(http, BOB) == _newest_first([t for t in seeded if t.owner == "bob"])
    assert _ids(http, {"X-Project-Id": "carol", "X-Roles": "member"}) == []
    assert _ids(http, NO_PROJECT) == []


def test_status_and_type_filters(http, seeded):
    mine = [t for t in seeded if t.owner == "alice"]
    for status in ("pending", "processing", "success", "failure"):
        wanted = _newest_first([t for t in mine if t.status == status])
        assert _ids(http, ALICE, status=status) == wanted
    assert _ids(http, ALICE, type="import") == _newest_first(
        [t for t in mine if t.type == "import"]
    )
    both = [t for t in seeded if t.type == "import" and t.status == "success"]
    assert _ids(http, ADMIN, type="import", status="success") == _newest_first(both)
    # Glance's filter takes only the legacy "import" type (400 otherwise, even for its own
    # api_image_import), as it checks the status.
    for refused in ("nothing-like-this", "api_image_import", "location_import"):
        answer = http.get("/v2/tasks", params={"type": refused}, headers=ADMIN)
        assert answer.status_code == 400, refused


def test_sort_directions_and_keys(http, seeded):
    newest_first = _newest_first(seeded)
    assert _ids(http, ADMIN, sort_dir="desc") == newest_first
    assert _ids(http, ADMIN, sort_dir="asc") == newest_first[::-1]
    assert _ids(http, ADMIN, sort_key="created_at", sort_dir="asc") == newest_first[::-1]
    assert _ids(http, ADMIN, sort_key="id", sort_dir="asc") == sorted(t.id for t in seeded)
    by_status = sorted(seeded, key=lambda t: (t.status, t.id))
    assert _ids(http, ADMIN, sort_key="status", sort_dir="asc") == [t.id for t in by_status]
    by_type = sorted(seeded, key=lambda t: (t.type, t.id), reverse=True)
    assert _ids(http, ADMIN, sort_key="type") == [t.id for t in by_type]
    # Seeding wrote each task's updated_at last, one task after another.
    assert _ids(http, ADMIN, sort_key="updated_at", sort_dir="asc") == [t.id for t in seeded]


def _follow(http, headers, url):
    """The bodies of every page from ``url`` on, following ``next``."""
    pages = []
    while url is not None:
        response = http.get(url, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body)
        url = body.get("next")
    return pages


@pytest.mark.parametrize("direction", ["desc", "asc"])
def test_marker_paging_yields_every_task_once_in_order(http, seeded, database, direction):
    mine = _newest_first([t for t in seeded if t.owner == "alice"])  # 7 tasks: 3 + 3 + 1
    expected = mine if direction == "desc" else mine[::-1]
    query = f"/v2/tasks?limit=3&sort_dir={direction}"
    first = http.get(query, headers=ALICE).json()
    assert [t["id"] for t in first["tasks"]] == expected[:3]
    assert first["first"] == query
    assert first["schema"] == "/v2/schemas/tasks"
    # A task added while paging does not shift the pages that follow.
    _create(database, "alice", "api_image_import", "pending", START + timedelta(minutes=30))
    _create(database, "alice", "api_image_import", "pending", START - timedelta(minutes=30))
    pages = [first, *_follow(http, ALICE, first["next"])]
    added_at_the_end = 1  # the new task that sorts after every seeded one in this direction
    assert [len(p["tasks"]) for p in pages] == [3, 3, 1 + added_at_the_end]
    seen = [t["id"] for page in pages for t in page["tasks"]]
    assert seen[:7] == expected
    assert len(set(seen)) == len(seen)
    assert "next" not in pages[-1]
    for page in pages[:-1]:
        parts = urlsplit(page["next"])
        assert parts.path == "/v2/tasks"
        params = dict(parse_qsl(parts.query))
        assert params == {"marker": page["tasks"][-1]["id"], "limit": "3", "sort_dir": direction}


def test_a_full_page_has_a_next_link_as_in_glance(http, seeded):
    bobs = _newest_first([t for t in seeded if t.owner == "bob"])  # 3 tasks
    pages = _follow(http, BOB, "/v2/tasks?limit=3")
    # Glance links the page after any full page; after the last full one it is empty.
    assert [[t["id"] for t in p["tasks"]] for p in pages] == [bobs, []]
    assert "next" not in pages[-1]
    filtered = _follow(http, ADMIN, "/v2/tasks?limit=2&type=import")
    wanted = [t for t in seeded if t.type == "import"]
    assert [t["id"] for p in filtered for t in p["tasks"]] == _newest_first(wanted)
    assert all(len(p["tasks"]) == 2 for p in filtered[:-1])
    assert len(filtered[-1]["tasks"]) < 2
    assert dict(parse_qsl(urlsplit(filtered[0]["next"]).query)) == {
        "marker": filtered[0]["tasks"][-1]["id"],
        "limit": "2",
        "type": "import",
    }


def test_bad_parameters_are_400(http, seeded):
    bobs_task = next(t.id for t in seeded if t.owner == "bob")
    for params, words in (
        ({"marker": str(uuid.uuid4())}, "not a task you can see"),
        ({"marker": bobs_task}, "not a task you can see"),
        ({"marker": "not-a-uuid"}, "Invalid marker format"),
        ({"sort_key": "owner"}, "cannot sort tasks by 'owner'"),
        ({"sort_key": ""}, "cannot sort tasks by ''"),
        ({"sort_dir": "up"}, "Invalid sort direction"),
        ({"status": "done"}, "Invalid status value"),
        ({"limit": "-1"}, "limit"),
    ):
        response = http.get("/v2/tasks", params=params, headers=ALICE)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error_code"] == "invalid_request"
        assert words in response.json()["message"], (params, response.text)
    assert http.get("/v2/tasks", params={"marker": bobs_task}, headers=BOB).status_code == 200


def test_entries_are_glance_task_stubs(http, seeded):
    [stub] = [t for t in http.get("/v2/tasks", headers=ADMIN).json()["tasks"] if t["owner"] is None]
    # As in Glance, expires_at is there only once the task has ended (this one is processing).
    assert set(stub) == STUB_FIELDS - {"expires_at"}
    full = http.get(stub["self"], headers=ADMIN).json()
    assert {k: full[k] for k in stub} == stub
    assert {"input", "result", "message", "attempts", "stages"} <= set(full) - set(stub)
    assert stub["self"] == f"/v2/tasks/{stub['id']}"
    assert stub["schema"] == "/v2/schemas/task"
    assert (stub["type"], stub["status"]) == ("api_image_import", "processing")
    assert stub["created_at"] == START.replace(minute=5).strftime("%Y-%m-%dT%H:%M:%SZ")
    schema = http.get("/v2/schemas/tasks").json()
    # Glance's partial task schema keeps image_id, user_id and request_id, which its stubs
    # never show.
    shown = set(schema["properties"]["tasks"]["items"]["properties"])
    assert shown == STUB_FIELDS | {"image_id", "user_id", "request_id"}


def test_upload_tasks_are_no_glance_tasks(http, seeded, database):
    # PUT /file runs as an imageport task, marked so; Glance writes such data without a task.
    uploads = [
        _create(database, "bob", "api_image_import", "success", START + timedelta(seconds=i),
                task_input={"_upload": True})
        for i in range(-5, 300, 10)
    ]  # fmt: skip
    bobs = _newest_first([t for t in seeded if t.owner == "bob"])
    assert _ids(http, BOB) == bobs
    assert _ids(http, ADMIN) == _newest_first(seeded)
    # Pages stay full however many upload tasks lie between the Glance tasks.
    pages = _follow(http, BOB, "/v2/tasks?limit=1")
    assert [[t["id"] for t in p["tasks"]] for p in pages] == [[i] for i in bobs] + [[]]
    hidden = uploads[0].id
    assert http.get(f"/v2/tasks/{hidden}", headers=ADMIN).status_code == 404
    marker = http.get("/v2/tasks", params={"marker": hidden}, headers=ADMIN)
    assert marker.status_code == 400
