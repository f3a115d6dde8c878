"""Every page query of the image API is served by an index (PostgreSQL's EXPLAIN says so).

The queries are the ones the API really sends: captured from the engine while a test client
asks for the default page, a filter, a sort, a deep marker page and one image. Each is then
explained with sequential scans and sorts priced out of reach (``enable_seqscan`` and
``enable_sort`` off): a plan that still scans the images table sequentially, or sorts rows
it read from it, has no index to serve it. ``bench/catalog.py`` measures the same requests
on 100,000 images.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import psycopg
import pytest
from sqlalchemy import event, make_url

from imageport.api.app import create_app
from imageport.config import Settings
from imageport.pipeline.context import Services

IMAGES = 120


class Client:
    """A synchronous client of the app in this process (its lifespan entered)."""

    def __init__(self, app) -> None:
        self.loop = asyncio.new_event_loop()
        self.lifespan = app.router.lifespan_context(app)
        self.loop.run_until_complete(self.lifespan.__aenter__())
        transport = httpx.ASGITransport(app=app)
        self.http = httpx.AsyncClient(transport=transport, base_url="http://imageport")

    def get(self, path: str) -> httpx.Response:
        return self.loop.run_until_complete(self.http.get(path))

    def post(self, path: str, json: object) -> httpx.Response:
        return self.loop.run_until_complete(self.http.post(path, json=json))

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.run_until_complete(self.lifespan.__aexit__(None, None, None))
        self.loop.close()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, postgres_url):
    """One catalog for the module (filling it through the API is the slow part)."""
    conninfo = make_url(postgres_url).set(drivername="postgresql")
    with psycopg.connect(conninfo.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    data = tmp_path_factory.mktemp("catalog") / "data"
    settings = Settings(data_dir=data, database_url=postgres_url)
    services = Services.from_settings(settings)
    services.db.upgrade()
    captured: list[tuple[str, object]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many):
        if statement.lstrip().upper().startswith("SELECT") and "images" in statement:
            captured.append((statement, parameters))

    client = Client(create_app(settings, services=services))
    try:
        for i in range(IMAGES):
            body = {
                "name": f"image-{i % 7}",
                "disk_format": "qcow2",
                "container_format": "bare",
                "os_distro": "ubuntu" if i % 2 else "debian",
                "tags": [f"tag-{i % 5}", "common"],
            }
            assert client.post("/v2/images", json=body).status_code == 201
        with psycopg.connect(conninfo.render_as_string(hide_password=False)) as conn:
            conn.execute("ANALYZE")
        event.listen(services.db.engine, "before_cursor_execute", capture)
        yield client, captured, conninfo.render_as_string(hide_password=False)
    finally:
        client.close()
        services.close()


def _plan_nodes(plan: dict) -> list[dict]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(_plan_nodes(child))
    return nodes


def _explain(conninfo: str, statement: str, parameters) -> dict:
    with psycopg.connect(conninfo) as conn:
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_sort = off")
        row = conn.execute("EXPLAIN (FORMAT JSON) " + statement, parameters).fetchone()
    return row[0][0]["Plan"]


def _page_queries(client, captured, path: str) -> list[tuple[str, object]]:
    captured.clear()
    answer = client.get(path)
    assert answer.status_code == 200, answer.text
    # The page query selects image rows in a sort order (lookups of one row are not pages).
    return [(s, p) for s, p in captured if "ORDER BY" in s and "FROM images" in s]


@pytest.mark.parametrize(
    "query",
    [
        "",  # the default page: newest first
        "?status=queued",  # a filter on a column
        "?os_distro=ubuntu",  # a filter on a property
        "?tag=tag-3",  # a filter on a tag
        "?sort_key=name&sort_dir=asc",  # a sort on another key
        "?visibility=shared",  # Glance's visibility filter
    ],
)
def test_every_page_query_uses_an_index(catalog, query):
    client, captured, conninfo = catalog
    paths = [f"/v2/images{query}"]
    first = client.get(f"/v2/images{query}{'&' if query else '?'}limit=10").json()
    if first["images"] and "next" in first:
        paths.append(first["next"])  # a marker page: the scan must start at the marker
    for path in paths:
        queries = _page_queries(client, captured, path)
        assert queries, f"no page query captured for {path}"
        for statement, parameters in queries:
            plan = _explain(conninfo, statement, parameters)
            nodes = _plan_nodes(plan)
            text = json.dumps(plan)
            assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], (
                f"{path}: a sequential scan\n{text}"
            )
            assert not [n for n in nodes if n["Node Type"] == "Sort"], (
                f"{path}: rows sorted after the scan, not read in index order\n{text}"
            )
            if "marker=" in path:
                scans = [n for n in nodes if n.get("Relation Name") == "images"]
                assert any("Index Cond" in n for n in scans), (
                    f"{path}: the marker does not bound the index scan\n{text}"
                )


def test_one_image_is_found_by_its_key(catalog):
    client, captured, conninfo = catalog
    image_id = client.get("/v2/images?limit=1").json()["images"][0]["id"]
    captured.clear()
    assert client.get(f"/v2/images/{image_id}").status_code == 200
    for statement, parameters in captured:
        nodes = _plan_nodes(_explain(conninfo, statement, parameters))
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], statement
