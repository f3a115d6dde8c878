"""The scripted sequence both servers receive, in order.

It covers every call, filter, sort, error and import method of the Image API v2 reference
(../shared/seed/), in an order where each step sees the state the earlier ones left.

Images (``{var}`` → name, owner):

* group 1 — ``full`` cf-full (alice, private, every field, client id), ``pub`` cf-public
  (admin, public), ``comm`` cf-community (alice), ``shared`` cf-shared (alice, shared with
  p-b later);
* group 2, a second later — ``hidden`` cf-hidden (alice, os_hidden), ``prot`` cf-protected
  (alice, protected), ``bobimg`` cf-bob (bob, private), ``bobshared`` cf-bob-shared (bob,
  shared with p-a later);
* group 3, a second later — data: ``up`` cf-upload (PUT /file raw), ``upq`` cf-upload-qcow2,
  ``mism`` cf-mismatch (qcow2 declared, raw sent), ``gd`` / ``gd2`` cf-direct / cf-direct-store2
  (glance-direct), ``web`` / ``web2`` / ``weball`` (web-download to the default store, to
  store2, to all stores), ``webbad`` cf-web-refused, ``ctype`` cf-ctype (queued, formats set),
  ``bare`` cf-noformat (no formats), ``del`` cf-delete.
"""

from __future__ import annotations

from conformance.steps import JSON, OCTETS, PATCH, PATCH_V20, Cleanup, Pause, Req, Step, Wait

#: The client-chosen id of cf-full (the same on both servers: each has its own database).
FULL_ID = "c0f0c0f0-1111-4a2b-8c3d-00000000f011"
#: An id no image has.
UNKNOWN_ID = "c0f0c0f0-2222-4a2b-8c3d-00000000dead"
LONG = "x" * 256


def _create(name: str, var: str, who: str = "alice", **fields: object) -> Req:
    body = {"name": name, "disk_format": "raw", "container_format": "bare", **fields}
    body = {k: v for k, v in body.items() if v is not None}
    return Req(
        f"create {name}",
        "POST",
        "/v2/images",
        who,
        json=body,
        save={var: "id"},
        check_headers=("location", "openstack-image-import-methods", "openstack-image-store-ids"),
    )


def _patch(name: str, image: str, ops: object, who: str = "alice", **kw: object) -> Req:
    return Req(
        name,
        "PATCH",
        f"/v2/images/{{{image}}}",
        who,
        json=ops,
        content_type=str(kw.pop("content_type", PATCH)),
        accept=str(kw.pop("accept", "*/*")),
        quiet=bool(kw.pop("quiet", False)),
    )


def versions() -> list[Step]:
    """Version discovery, including paths Glance's version negotiation answers itself."""
    return [
        Req("versions root", "GET", "/", "anon"),
        Req("versions root json", "GET", "/", "alice", accept=JSON),
        Req("versions list", "GET", "/versions", "anon"),
        Req("versions list authed", "GET", "/versions", "alice"),
        Req("version v2", "GET", "/v2", "alice", check_headers=("location",)),
        Req("version v2 slash", "GET", "/v2/", "alice"),
        Req("version unknown v3", "GET", "/v3/images", "alice"),
        Req("version unknown v1", "GET", "/v1/images", "alice"),
        Req("version unknown v2.99", "GET", "/v2.99/images", "alice"),
        Req("version unknown path", "GET", "/bogus", "alice"),
    ]


def negotiation() -> list[Step]:
    """The media type of an error body for each kind of Accept header (webob's choice)."""
    unknown = f"/v2/images/{UNKNOWN_ID}"
    accepts = [
        ("no Accept", None),
        ("*/*", "*/*"),
        ("json", JSON),
        ("text/plain", "text/plain"),
        ("text/html", "text/html"),
        ("text/*", "text/*"),
        ("application/*", "application/*"),
        ("json or plain", "text/plain, application/json"),
        ("json q0.5 or any", "application/json;q=0.5, */*"),
        ("json or any q0.5", "application/json, */*;q=0.5"),
        ("html q0 or any", "text/html;q=0, */*"),
        ("any q0", "*/*;q=0"),
        ("octet-stream", OCTETS),
        ("invalid", "foo"),
    ]
    steps: list[Step] = [
        Req(f"error accept {label}", "GET", unknown, accept=accept) for label, accept in accepts
    ]
    steps += [
        Req("error 401 accept none", "GET", "/v2/images", "anon", accept=None),
        Req("error 401 accept text/plain", "GET", "/v2/images", "anon", accept="text/plain"),
        Req("error 405 accept none", "PUT", "/v2/images", accept=None),
        Req("error 400 accept none", "GET", "/v2/images?limit=-1", accept=None),
    ]
    return steps


def schemas() -> list[Step]:
    """The JSON schemas of the reference (image, images, member, members, task, tasks)."""
    steps: list[Step] = [
        Req(f"schema {name}", "GET", f"/v2/schemas/{name}")
        for name in ("image", "images", "member", "members", "task", "tasks")
    ]
    steps += [
        Req("schema unknown", "GET", "/v2/schemas/bogus"),
        Req("schema unknown json", "GET", "/v2/schemas/bogus", accept=JSON),
        Req("schema as reader", "GET", "/v2/schemas/image", "reader"),
    ]
    return steps


def auth() -> list[Step]:
    """Identity: unconfirmed requests are refused by both."""
    unconfirmed = {"X-Identity-Status": "Invalid", "X-Project-Id": "p-a", "X-Roles": "admin"}
    return [
        Req("anon list images", "GET", "/v2/images", "anon"),
        Req("anon list images json", "GET", "/v2/images", "anon", accept=JSON),
        Req("unconfirmed list images", "GET", "/v2/images", "anon", headers=unconfirmed),
        Req("anon info import", "GET", "/v2/info/import", "anon"),
        Req("anon schema", "GET", "/v2/schemas/image", "anon"),
        Req("anon create", "POST", "/v2/images", "anon", json={"name": "x"}),
    ]


def create() -> list[Step]:
    """Creation: every field, every refusal, the three groups of images."""
    full = {
        "id": FULL_ID,
        "name": "cf-full",
        "disk_format": "raw",
        "container_format": "bare",
        "visibility": "private",
        "protected": False,
        "os_hidden": False,
        "min_disk": 1,
        "min_ram": 64,
        "tags": ["t1", "t2"],
        "prop1": "v1",
        "os_distro": "cirros",
    }
    steps: list[Step] = [
        Req(
            "create cf-full (every field)",
            "POST",
            "/v2/images",
            json=full,
            save={"full": "id", "full_created": "created_at"},
            check_headers=(
                "location",
                "openstack-image-import-methods",
                "openstack-image-store-ids",
            ),
        ),
        Req("create duplicate id", "POST", "/v2/images", json={**full, "name": "dup"}),
        Req(
            "create duplicate id json",
            "POST",
            "/v2/images",
            json={"id": FULL_ID},
            accept=JSON,
        ),
        _create("cf-public", "pub", "admin", visibility="public", tags=["t1"]),
        _create("cf-community", "comm", visibility="community", disk_format="qcow2"),
        _create("cf-shared", "shared", visibility="shared", tags=["t2"]),
        Pause(1.5),
        Req(
            "create cf-hidden",
            "POST",
            "/v2/images",
            json={"name": "cf-hidden", "os_hidden": True, "disk_format": "raw"},
            save={"hidden": "id", "ts_mid": "created_at"},
        ),
        _create("cf-protected", "prot", protected=True, container_format="ovf"),
        _create("cf-bob", "bobimg", "bob", disk_format="vhd"),
        _create("cf-bob-shared", "bobshared", "bob", visibility="shared"),
        Pause(1.5),
        _create("cf-upload", "up", min_ram=32),
        _create("cf-upload-qcow2", "upq", disk_format="qcow2"),
        _create("cf-mismatch", "mism", disk_format="qcow2"),
        _create("cf-direct", "gd"),
        _create("cf-direct-store2", "gd2"),
        _create("cf-web", "web"),
        _create("cf-web-store2", "web2"),
        _create("cf-web-all", "weball"),
        _create("cf-web-refused", "webbad"),
        _create("cf-ctype", "ctype"),
        _create("cf-noformat", "bare", disk_format=None, container_format=None),
        _create("cf-delete", "del"),
        _create("cf-upload-noctype", "badup"),
        Req(
            "create minimal (no body fields)",
            "POST",
            "/v2/images",
            json={},
            save={"minimal": "id"},
        ),
        Req(
            "create for another owner (admin)",
            "POST",
            "/v2/images",
            "admin",
            json={"name": "cf-admin-for-b", "owner": "p-b"},
            save={"forb": "id"},
        ),
    ]
    bad: list[tuple[str, dict[str, object], str]] = [
        ("bad disk_format", {"disk_format": "bogus"}, "*/*"),
        ("bad container_format", {"container_format": "bogus"}, JSON),
        ("negative min_ram", {"min_ram": -1}, "*/*"),
        ("string min_disk", {"min_disk": "ten"}, JSON),
        ("name too long", {"name": LONG}, "*/*"),
        ("id not a uuid", {"id": "not-a-uuid"}, JSON),
        ("bad visibility", {"visibility": "bogus"}, "*/*"),
        ("tags not a list", {"tags": "t1"}, JSON),
        ("tag too long", {"tags": [LONG]}, "*/*"),
        ("duplicate tags", {"name": "cf-duptags", "tags": ["d", "d"]}, "*/*"),
        ("read-only status", {"status": "active"}, JSON),
        ("read-only size", {"size": 10}, "*/*"),
        ("read-only checksum", {"checksum": "0" * 32}, "*/*"),
        ("read-only created_at", {"created_at": "2020-01-01T00:00:00Z"}, JSON),
        ("read-only os_hash_algo", {"os_hash_algo": "sha512"}, "*/*"),
        ("read-only virtual_size", {"virtual_size": 5}, "*/*"),
        ("reserved self", {"self": "/v2/images/x"}, JSON),
        ("reserved file", {"file": "/v2/images/x/file"}, "*/*"),
        ("reserved schema", {"schema": "/v2/schemas/image"}, "*/*"),
        ("reserved os_glance prop", {"os_glance_import_task": "x"}, JSON),
        ("locations", {"locations": []}, "*/*"),
        ("protected not bool", {"protected": "yes"}, "*/*"),
        ("os_hidden not bool", {"os_hidden": "x"}, JSON),
        ("extra prop not string", {"prop9": 5}, "*/*"),
        ("extra prop key too long", {LONG: "v"}, "*/*"),
        ("other owner (member)", {"owner": "p-b"}, JSON),
        ("public (member)", {"visibility": "public"}, "*/*"),
    ]
    # Each carries the name cf-bad: what one server creates and the other refuses is deleted
    # afterwards (Cleanup), so that later lists compare the same images.
    steps += [
        Req(f"create {n}", "POST", "/v2/images", json={"name": "cf-bad", **b}, accept=a)
        for n, b, a in bad
    ]
    steps += [
        Req("create as reader", "POST", "/v2/images", "reader", json={"name": "r"}),
        Req("create body not json", "POST", "/v2/images", data=b"{not json", content_type=JSON),
        Req("create body a list", "POST", "/v2/images", json=[{"name": "x"}]),
        Req("create body a string", "POST", "/v2/images", json="x", accept=JSON),
        Req("create no body", "POST", "/v2/images", data=b"", content_type=JSON),
        Req(
            "create text/plain",
            "POST",
            "/v2/images",
            data=b'{"name": "cf-bad"}',
            content_type="text/plain",
        ),
        Req("create PUT /v2/images", "PUT", "/v2/images", json={"name": "x"}),
        Req("create DELETE /v2/images", "DELETE", "/v2/images"),
        Cleanup(keep=("minimal",)),
    ]
    return steps


def show() -> list[Step]:
    """``GET /v2/images/{id}`` as every identity."""
    return [
        Req("show own", "GET", "/v2/images/{full}"),
        Req("show as reader", "GET", "/v2/images/{full}", "reader"),
        Req("show as admin", "GET", "/v2/images/{full}", "admin"),
        Req("show other project's private", "GET", "/v2/images/{full}", "bob"),
        Req("show other project's private json", "GET", "/v2/images/{full}", "bob", accept=JSON),
        Req("show public as bob", "GET", "/v2/images/{pub}", "bob"),
        Req("show community as bob", "GET", "/v2/images/{comm}", "bob"),
        Req("show shared before membership", "GET", "/v2/images/{shared}", "bob"),
        Req("show unknown", "GET", f"/v2/images/{UNKNOWN_ID}"),
        Req("show not a uuid", "GET", "/v2/images/not-a-uuid", accept=JSON),
        Req("show minimal", "GET", "/v2/images/{minimal}"),
        Req("show no formats", "GET", "/v2/images/{bare}"),
        Req("show hidden", "GET", "/v2/images/{hidden}"),
        Req("show admin-made for p-b as bob", "GET", "/v2/images/{forb}", "bob"),
        Req("POST on an image", "POST", "/v2/images/{full}", json={}),
    ]


def data() -> list[Step]:
    """``PUT /file``, ``PUT /stage`` and ``POST /import`` with every method."""
    web_ok = {"method": {"name": "web-download", "uri": "{files}/raw.img"}}
    return [
        # PUT /file
        Req("upload raw", "PUT", "/v2/images/{up}/file", data="@raw", content_type=OCTETS),
        Req(
            "show uploaded",
            "GET",
            "/v2/images/{up}",
            save={"up_checksum": "checksum", "up_hash": "os_hash_value"},
        ),
        Req(
            "upload again (active)", "PUT", "/v2/images/{up}/file", data="@raw", content_type=OCTETS
        ),
        Req(
            "upload wrong content-type",
            "PUT",
            "/v2/images/{ctype}/file",
            data="@raw",
            content_type=JSON,
        ),
        Req(
            "upload no content-type",
            "PUT",
            "/v2/images/{badup}/file",
            data="@raw",
            content_type="",
            accept=JSON,
        ),
        Req(
            "upload as reader",
            "PUT",
            "/v2/images/{ctype}/file",
            "reader",
            data="@raw",
            content_type=OCTETS,
        ),
        Req(
            "upload to other project's",
            "PUT",
            "/v2/images/{bobimg}/file",
            data="@raw",
            content_type=OCTETS,
        ),
        Req(
            "upload unknown image",
            "PUT",
            f"/v2/images/{UNKNOWN_ID}/file",
            data="@raw",
            content_type=OCTETS,
        ),
        Req(
            "upload without formats",
            "PUT",
            "/v2/images/{bare}/file",
            data="@raw",
            content_type=OCTETS,
        ),
        Req("upload qcow2", "PUT", "/v2/images/{upq}/file", data="@qcow2", content_type=OCTETS),
        Req("show qcow2", "GET", "/v2/images/{upq}"),
        Req(
            "upload format mismatch",
            "PUT",
            "/v2/images/{mism}/file",
            data="@raw",
            content_type=OCTETS,
        ),
        Req("show after mismatch", "GET", "/v2/images/{mism}"),
        # PUT /stage and glance-direct
        Req("stage", "PUT", "/v2/images/{gd}/stage", data="@raw", content_type=OCTETS),
        Req("show staged", "GET", "/v2/images/{gd}"),
        Req("stage again", "PUT", "/v2/images/{gd}/stage", data="@raw", content_type=OCTETS),
        Req(
            "stage wrong content-type",
            "PUT",
            "/v2/images/{ctype}/stage",
            data="@raw",
            content_type=JSON,
            accept=JSON,
        ),
        Req(
            "stage as reader",
            "PUT",
            "/v2/images/{ctype}/stage",
            "reader",
            data="@raw",
            content_type=OCTETS,
        ),
        Req(
            "stage active image",
            "PUT",
            "/v2/images/{up}/stage",
            data="@raw",
            content_type=OCTETS,
        ),
        Req(
            "stage unknown image",
            "PUT",
            f"/v2/images/{UNKNOWN_ID}/stage",
            data="@raw",
            content_type=OCTETS,
        ),
        Req(
            "import glance-direct",
            "POST",
            "/v2/images/{gd}/import",
            json={"method": {"name": "glance-direct"}},
        ),
        Wait("gd"),
        Req(
            "import glance-direct not staged",
            "POST",
            "/v2/images/{ctype}/import",
            json={"method": {"name": "glance-direct"}},
        ),
        Req("stage store2", "PUT", "/v2/images/{gd2}/stage", data="@raw", content_type=OCTETS),
        Req(
            "import glance-direct header store2",
            "POST",
            "/v2/images/{gd2}/import",
            json={"method": {"name": "glance-direct"}},
            headers={"X-Image-Meta-Store": "store2"},
        ),
        Wait("gd2"),
        # web-download
        Req("import web-download", "POST", "/v2/images/{web}/import", json=web_ok),
        Wait("web"),
        Req(
            "import web-download stores store2",
            "POST",
            "/v2/images/{web2}/import",
            json={**web_ok, "stores": ["store2"]},
        ),
        Wait("web2"),
        Req(
            "import web-download all_stores",
            "POST",
            "/v2/images/{weball}/import",
            json={**web_ok, "all_stores": True},
        ),
        Wait("weball"),
        Req(
            "import web-download refused port",
            "POST",
            "/v2/images/{webbad}/import",
            json={"method": {"name": "web-download", "uri": "http://127.0.0.1:1/raw.img"}},
        ),
        Req(
            "import web-download refused host",
            "POST",
            "/v2/images/{webbad}/import",
            json={"method": {"name": "web-download", "uri": "http://169.254.169.254/x"}},
            accept=JSON,
        ),
        Req(
            "import web-download refused scheme",
            "POST",
            "/v2/images/{webbad}/import",
            json={"method": {"name": "web-download", "uri": "ftp://127.0.0.1/raw.img"}},
        ),
        Req(
            "import web-download no uri",
            "POST",
            "/v2/images/{webbad}/import",
            json={"method": {"name": "web-download"}},
        ),
        Req(
            "import web-download unknown store",
            "POST",
            "/v2/images/{webbad}/import",
            json={**web_ok, "stores": ["nostore"]},
            accept=JSON,
        ),
        Req(
            "import web-download stores and all_stores",
            "POST",
            "/v2/images/{webbad}/import",
            json={**web_ok, "stores": ["store2"], "all_stores": True},
        ),
        Req(
            "import web-download header unknown store",
            "POST",
            "/v2/images/{webbad}/import",
            json=web_ok,
            headers={"X-Image-Meta-Store": "nostore"},
        ),
        Req(
            "import web-download active image",
            "POST",
            "/v2/images/{up}/import",
            json=web_ok,
        ),
        Req(
            "import web-download no formats",
            "POST",
            "/v2/images/{bare}/import",
            json=web_ok,
        ),
        Req(
            "import as reader",
            "POST",
            "/v2/images/{webbad}/import",
            "reader",
            json=web_ok,
        ),
        Req(
            "import other project's",
            "POST",
            "/v2/images/{bobimg}/import",
            json=web_ok,
        ),
        Req(
            "import unknown image",
            "POST",
            f"/v2/images/{UNKNOWN_ID}/import",
            json=web_ok,
        ),
        Req(
            "import unknown method",
            "POST",
            "/v2/images/{webbad}/import",
            json={"method": {"name": "bogus-method"}},
        ),
        Req(
            "import glance-download (not enabled)",
            "POST",
            "/v2/images/{webbad}/import",
            json={
                "method": {
                    "name": "glance-download",
                    "glance_image_id": FULL_ID,
                    "glance_region": "RegionOne",
                }
            },
        ),
        Req("import no method", "POST", "/v2/images/{webbad}/import", json={}, accept=JSON),
        Req(
            "import method without name",
            "POST",
            "/v2/images/{webbad}/import",
            json={"method": {}},
        ),
        Req(
            "import body not json",
            "POST",
            "/v2/images/{webbad}/import",
            data=b"nope",
            content_type=JSON,
        ),
        Req("show after glance-direct", "GET", "/v2/images/{gd}"),
        Req("show after glance-direct store2", "GET", "/v2/images/{gd2}"),
        Req("show after web-download", "GET", "/v2/images/{web}"),
        Req("show after web-download store2", "GET", "/v2/images/{web2}"),
        Req("show after web-download all", "GET", "/v2/images/{weball}"),
        Req("show web-refused", "GET", "/v2/images/{webbad}"),
        Req(
            "import glance-direct again (active)",
            "POST",
            "/v2/images/{gd}/import",
            json={"method": {"name": "glance-direct"}},
        ),
        # One server took the upload without a Content-Type, the other refused it.
        Cleanup(keep=("minimal",), names=("cf-bad", "cf-upload-noctype")),
    ]


def copy_image() -> list[Step]:
    """copy-image (administrators), its refusals, and the result."""
    to2 = {"method": {"name": "copy-image"}, "stores": ["store2"]}
    return [
        Req("copy-image as member", "POST", "/v2/images/{up}/import", json=to2),
        Req("copy-image to store2", "POST", "/v2/images/{up}/import", "admin", json=to2),
        Wait("up", store="store2"),
        Req("show after copy-image", "GET", "/v2/images/{up}"),
        Req(
            "copy-image again (already there)", "POST", "/v2/images/{up}/import", "admin", json=to2
        ),
        Req(
            "copy-image unknown store",
            "POST",
            "/v2/images/{upq}/import",
            "admin",
            json={"method": {"name": "copy-image"}, "stores": ["nostore"]},
            accept=JSON,
        ),
        Req(
            "copy-image queued image",
            "POST",
            "/v2/images/{webbad}/import",
            "admin",
            json=to2,
        ),
        Req(
            "copy-image no stores",
            "POST",
            "/v2/images/{upq}/import",
            "admin",
            json={"method": {"name": "copy-image"}},
        ),
        Req(
            "copy-image all_stores",
            "POST",
            "/v2/images/{upq}/import",
            "admin",
            json={"method": {"name": "copy-image"}, "all_stores": True},
        ),
        Wait("upq", store="store2"),
        Req("show after copy-image all", "GET", "/v2/images/{upq}"),
    ]


def downloads() -> list[Step]:
    """``GET /file``: whole, ranges (single, suffix, open, multiple, unsatisfiable, bad)."""
    file = "/v2/images/{up}/file"
    ranged = ("content-range", "content-md5", "content-type")
    return [
        Req("download", "GET", file, check_headers=("content-md5", "content-type")),
        Req("download as reader", "GET", file, "reader"),
        Req("download as admin", "GET", file, "admin"),
        Req(
            "download range 0-9", "GET", file, headers={"Range": "bytes=0-9"}, check_headers=ranged
        ),
        Req(
            "download range suffix",
            "GET",
            file,
            headers={"Range": "bytes=-10"},
            check_headers=ranged,
        ),
        Req(
            "download range open",
            "GET",
            file,
            headers={"Range": "bytes=100-"},
            check_headers=ranged,
        ),
        Req("download range multiple", "GET", file, headers={"Range": "bytes=0-1,5-6"}),
        Req("download range beyond", "GET", file, headers={"Range": "bytes=999999999-"}),
        Req("download range bad unit", "GET", file, headers={"Range": "items=0-1"}),
        Req("download range garbage", "GET", file, headers={"Range": "bytes=z-y"}, accept=JSON),
        Req("download range reversed", "GET", file, headers={"Range": "bytes=9-0"}),
        Req(
            "download content-range request",
            "GET",
            file,
            headers={"Content-Range": "bytes 0-9/*"},
            check_headers=ranged,
        ),
        Req("download qcow2", "GET", "/v2/images/{upq}/file"),
        Req("download glance-direct result", "GET", "/v2/images/{gd}/file"),
        Req("download web-download result", "GET", "/v2/images/{web}/file"),
        Req("download queued (no data)", "GET", "/v2/images/{ctype}/file"),
        Req("download community no data as bob", "GET", "/v2/images/{comm}/file", "bob"),
        Req("download other project's", "GET", "/v2/images/{bobimg}/file"),
        Req("download unknown", "GET", f"/v2/images/{UNKNOWN_ID}/file", accept=JSON),
        Req("download anon", "GET", file, "anon"),
    ]


def deactivation() -> list[Step]:
    """Deactivate / reactivate (administrators) and downloads of a deactivated image."""
    return [
        Req("deactivate as member", "POST", "/v2/images/{up}/actions/deactivate"),
        Req("deactivate", "POST", "/v2/images/{up}/actions/deactivate", "admin"),
        Req("show deactivated", "GET", "/v2/images/{up}"),
        Req("download deactivated as member", "GET", "/v2/images/{up}/file"),
        Req("download deactivated as member json", "GET", "/v2/images/{up}/file", accept=JSON),
        Req("download deactivated as admin", "GET", "/v2/images/{up}/file", "admin"),
        Req("deactivate again", "POST", "/v2/images/{up}/actions/deactivate", "admin"),
        Req("list status deactivated", "GET", "/v2/images?status=deactivated"),
        Req("reactivate as member", "POST", "/v2/images/{up}/actions/reactivate"),
        Req("reactivate", "POST", "/v2/images/{up}/actions/reactivate", "admin"),
        Req("reactivate active", "POST", "/v2/images/{up}/actions/reactivate", "admin"),
        Req("download reactivated", "GET", "/v2/images/{up}/file"),
        Req("deactivate queued", "POST", "/v2/images/{ctype}/actions/deactivate", "admin"),
        Req("reactivate queued", "POST", "/v2/images/{ctype}/actions/reactivate", "admin"),
        Req(
            "deactivate unknown",
            "POST",
            f"/v2/images/{UNKNOWN_ID}/actions/deactivate",
            "admin",
            accept=JSON,
        ),
        Req("unknown action", "POST", "/v2/images/{up}/actions/bogus", "admin"),
        Req("deactivate with GET", "GET", "/v2/images/{up}/actions/deactivate", "admin"),
    ]


def members() -> list[Step]:
    """Image members as owner, as member, as strangers; statuses and list visibility."""
    base = "/v2/images/{shared}/members"
    return [
        Req("member add", "POST", base, json={"member": "p-b"}),
        Req("member add duplicate", "POST", base, json={"member": "p-b"}),
        Req("member add duplicate json", "POST", base, json={"member": "p-b"}, accept=JSON),
        Req("member add to private", "POST", "/v2/images/{full}/members", json={"member": "p-b"}),
        Req("member add to community", "POST", "/v2/images/{comm}/members", json={"member": "p-b"}),
        Req(
            "member add to public",
            "POST",
            "/v2/images/{pub}/members",
            "admin",
            json={"member": "p-b"},
        ),
        Req("member add no member", "POST", base, json={"foo": 1}),
        Req("member add member not string", "POST", base, json={"member": 5}, accept=JSON),
        Req("(clean-up) member 5", "DELETE", base + "/5", quiet=True),
        Req("member add body not json", "POST", base, data=b"x", content_type=JSON),
        Req("member add as bob", "POST", base, "bob", json={"member": "p-c"}),
        Req("member add as reader", "POST", base, "reader", json={"member": "p-c"}),
        Req(
            "member add unknown image",
            "POST",
            f"/v2/images/{UNKNOWN_ID}/members",
            json={"member": "p-b"},
        ),
        Req("member add p-c", "POST", base, json={"member": "p-c"}),
        Req("members list as owner", "GET", base),
        Req("members list as member", "GET", base, "bob"),
        Req("members list as admin", "GET", base, "admin"),
        Req("members list as stranger", "GET", "/v2/images/{full}/members", "bob"),
        Req("members list private", "GET", "/v2/images/{full}/members"),
        Req("members list unknown image", "GET", f"/v2/images/{UNKNOWN_ID}/members"),
        Req("member show as owner", "GET", base + "/p-b"),
        Req("member show as member", "GET", base + "/p-b", "bob"),
        Req("member show other member as member", "GET", base + "/p-c", "bob"),
        Req("member show unknown", "GET", base + "/p-x", accept=JSON),
        Req("shared visible to pending member", "GET", "/v2/images/{shared}", "bob"),
        Req("list as pending member", "GET", "/v2/images", "bob"),
        Req(
            "list shared pending as member",
            "GET",
            "/v2/images?visibility=shared&member_status=pending",
            "bob",
        ),
        Req("member accept", "PUT", base + "/p-b", "bob", json={"status": "accepted"}),
        Req("member accept by owner", "PUT", base + "/p-b", json={"status": "accepted"}),
        Req("member status bogus", "PUT", base + "/p-b", "bob", json={"status": "bogus"}),
        Req("member status missing", "PUT", base + "/p-b", "bob", json={}, accept=JSON),
        Req("member status for another", "PUT", base + "/p-c", "bob", json={"status": "accepted"}),
        Req(
            "member status unknown member",
            "PUT",
            base + "/p-x",
            "admin",
            json={"status": "accepted"},
        ),
        Req("list as accepted member", "GET", "/v2/images", "bob"),
        Req("list shared as member", "GET", "/v2/images?visibility=shared", "bob"),
        Req("member reject", "PUT", base + "/p-b", "bob", json={"status": "rejected"}),
        Req("list as rejected member", "GET", "/v2/images", "bob"),
        Req("list rejected", "GET", "/v2/images?visibility=shared&member_status=rejected", "bob"),
        Req("list member_status all as bob", "GET", "/v2/images?member_status=all", "bob"),
        Req("member pending again", "PUT", base + "/p-b", "bob", json={"status": "pending"}),
        Req("member delete as member", "DELETE", base + "/p-b", "bob"),
        Req("member delete as reader", "DELETE", base + "/p-c", "reader"),
        Req("member delete", "DELETE", base + "/p-c"),
        Req("member delete again", "DELETE", base + "/p-c"),
        Req("member delete unknown image", "DELETE", f"/v2/images/{UNKNOWN_ID}/members/p-b"),
        # bob shares with alice's project: alice is the member now.
        Req(
            "bob shares with p-a",
            "POST",
            "/v2/images/{bobshared}/members",
            "bob",
            json={"member": "p-a"},
        ),
        Req("list pending as alice", "GET", "/v2/images?member_status=pending&visibility=shared"),
        Req(
            "alice accepts",
            "PUT",
            "/v2/images/{bobshared}/members/p-a",
            json={"status": "accepted"},
        ),
        Req(
            "reader accepts (reader)",
            "PUT",
            "/v2/images/{bobshared}/members/p-a",
            "reader",
            json={"status": "accepted"},
        ),
        Req("show accepted shared as alice", "GET", "/v2/images/{bobshared}"),
        Req("show accepted shared as reader", "GET", "/v2/images/{bobshared}", "reader"),
        Req("members list as carol (stranger)", "GET", "/v2/images/{bobshared}/members", "carol"),
    ]


def listing() -> list[Step]:
    """``GET /v2/images``: every filter, sort and paging case of the reference."""
    plain = [
        ("list", "", "alice"),
        ("list as admin", "", "admin"),
        ("list as reader", "", "reader"),
        ("list as bob", "", "bob"),
        ("list as carol", "", "carol"),
        ("name", "name=cf-full", "alice"),
        ("name unknown", "name=nope", "alice"),
        ("status active", "status=active", "alice"),
        ("status queued", "status=queued", "alice"),
        ("status bogus", "status=bogus", "alice"),
        ("visibility public", "visibility=public", "alice"),
        ("visibility private", "visibility=private", "alice"),
        ("visibility shared", "visibility=shared", "alice"),
        ("visibility community", "visibility=community", "bob"),
        ("visibility all", "visibility=all", "alice"),
        ("visibility all admin", "visibility=all", "admin"),
        ("visibility bogus", "visibility=bogus", "alice"),
        ("member_status accepted", "member_status=accepted", "alice"),
        ("member_status all", "member_status=all", "alice"),
        ("member_status bogus", "member_status=bogus", "alice"),
        ("owner p-a", "owner=p-a", "alice"),
        ("owner p-b", "owner=p-b", "alice"),
        ("owner p-b admin", "owner=p-b", "admin"),
        ("tag t1", "tag=t1", "alice"),
        ("tag t1 and t2", "tag=t1&tag=t2", "alice"),
        ("tag unknown", "tag=nope", "alice"),
        ("size_min", "size_min=1", "alice"),
        ("size_max", "size_max=1000000", "alice"),
        ("size_min and max none", "size_min=2&size_max=1", "alice"),
        ("size_min bogus", "size_min=abc", "alice"),
        ("size_max negative", "size_max=-1", "alice"),
        ("created_at gt", "created_at=gt:{ts_mid}", "alice"),
        ("created_at gte", "created_at=gte:{ts_mid}", "alice"),
        ("created_at lt", "created_at=lt:{ts_mid}", "alice"),
        ("created_at lte", "created_at=lte:{ts_mid}", "alice"),
        ("created_at eq", "created_at=eq:{ts_mid}", "alice"),
        ("created_at neq", "created_at=neq:{ts_mid}", "alice"),
        ("created_at no operator", "created_at={ts_mid}", "alice"),
        ("created_at bad operator", "created_at=ge:{ts_mid}", "alice"),
        ("created_at bad date", "created_at=gt:yesterday", "alice"),
        ("updated_at gte", "updated_at=gte:{ts_mid}", "alice"),
        ("updated_at lt", "updated_at=lt:{ts_mid}", "alice"),
        ("created_at with offset", "created_at=lt:2099-01-01T00:00:00%2B01:00", "alice"),
        ("id in", "id=in:{full},{pub}", "alice"),
        ("name in", "name=in:cf-full,cf-public", "alice"),
        ("name in quoted", 'name=in:"cf-full","cf-public"', "alice"),
        ("name in unbalanced quote", 'name=in:"cf-full', "alice"),
        ("status in", "status=in:active,queued", "alice"),
        ("status in bogus", "status=in:active,bogus", "alice"),
        ("disk_format in", "disk_format=in:raw,qcow2", "alice"),
        ("container_format in", "container_format=in:bare,ovf", "alice"),
        ("os_hidden true", "os_hidden=true", "alice"),
        ("os_hidden false", "os_hidden=false", "alice"),
        ("os_hidden bogus", "os_hidden=bogus", "alice"),
        ("protected true", "protected=true", "alice"),
        ("protected false", "protected=false", "alice"),
        ("protected bogus", "protected=True", "alice"),
        ("disk_format", "disk_format=raw", "alice"),
        ("disk_format unknown", "disk_format=bogus", "alice"),
        ("container_format", "container_format=ovf", "alice"),
        ("checksum", "checksum={up_checksum}", "alice"),
        ("os_hash_value", "os_hash_value={up_hash}", "alice"),
        ("extra property", "prop1=v1", "alice"),
        ("extra property os_distro", "os_distro=cirros", "alice"),
        ("unknown property", "nosuchprop=x", "alice"),
        ("min_ram filter", "min_ram=32", "alice"),
        # sorts
        ("sort name asc", "sort=name:asc", "alice"),
        ("sort name desc", "sort=name:desc", "alice"),
        ("sort two keys", "sort=status:asc,name:desc", "alice"),
        ("sort default dir", "sort=name", "alice"),
        ("sort size", "sort=size:asc,name:asc", "alice"),
        ("sort bad key", "sort=bogus:asc", "alice"),
        ("sort bad dir", "sort=name:up", "alice"),
        ("sort_key name asc", "sort_key=name&sort_dir=asc", "alice"),
        ("sort_key default dir", "sort_key=name", "alice"),
        ("sort_key two", "sort_key=status&sort_key=name&sort_dir=asc&sort_dir=desc", "alice"),
        ("sort_key two one dir", "sort_key=status&sort_key=name&sort_dir=asc", "alice"),
        ("sort_key updated_at", "sort_key=updated_at&sort_dir=asc", "alice"),
        ("sort_key min_ram", "sort_key=min_ram&sort_dir=asc", "alice"),
        ("sort_key bogus", "sort_key=bogus", "alice"),
        ("sort_dir bogus", "sort_key=name&sort_dir=bogus", "alice"),
        ("sort and sort_key", "sort=name:asc&sort_key=name", "alice"),
        ("sort extra property", "sort=prop1:asc", "alice"),
        # paging
        ("limit 0", "limit=0", "alice"),
        ("limit negative", "limit=-1", "alice"),
        ("limit bogus", "limit=abc", "alice"),
        ("limit huge", "limit=100000", "alice"),
        ("marker unknown", f"marker={UNKNOWN_ID}", "alice"),
        ("marker not a uuid", "marker=not-a-uuid", "alice"),
        ("marker invisible", "marker={bobimg}", "alice"),
        ("marker visible to bob", "marker={bobimg}&limit=2", "bob"),
    ]
    steps: list[Step] = []
    for index, (name, query, who) in enumerate(plain):
        accept = JSON if index % 3 == 2 else "*/*"  # errors in both forms
        path = f"/v2/images?{query}" if query else "/v2/images"
        steps.append(Req(f"list {name}", "GET", path, who, accept=accept))
    steps += [
        Req("page 1", "GET", "/v2/images?limit=3", save={"m1": "images.2.id", "next1": "next"}),
        Req("page 2", "GET", "/v2/images?limit=3&marker={m1}", save={"m2": "images.2.id"}),
        Req("page 3", "GET", "/v2/images?limit=3&marker={m2}"),
        Req("page 2 by next link", "GET", "{next1}"),
        Req(
            "sorted page 1",
            "GET",
            "/v2/images?sort=name:asc&limit=4",
            save={"sm1": "images.3.id", "snext": "next"},
        ),
        Req("sorted page 2", "GET", "/v2/images?sort=name:asc&limit=4&marker={sm1}"),
        Req("sorted page 2 by next link", "GET", "{snext}"),
        Req(
            "filtered page 1",
            "GET",
            "/v2/images?status=queued&limit=2",
            save={"fm1": "images.1.id", "fnext": "next"},
        ),
        Req("filtered page 2 by next link", "GET", "{fnext}"),
        Req("page past end", "GET", "/v2/images?limit=100&marker={fm1}&status=queued"),
    ]
    return steps


def patches() -> list[Step]:
    """JSON patch on core and extra properties, every refusal."""
    return [
        _patch(
            "patch replace name", "full", [{"op": "replace", "path": "/name", "value": "cf-full"}]
        ),
        _patch("patch add extra", "full", [{"op": "add", "path": "/prop2", "value": "x"}]),
        _patch("patch replace extra", "full", [{"op": "replace", "path": "/prop2", "value": "y"}]),
        _patch("patch remove extra", "full", [{"op": "remove", "path": "/prop2"}]),
        _patch("patch remove missing extra", "full", [{"op": "remove", "path": "/prop2"}]),
        _patch(
            "patch replace missing extra",
            "full",
            [{"op": "replace", "path": "/nosuch", "value": "v"}],
            accept=JSON,
        ),
        _patch(
            "patch add existing extra", "full", [{"op": "add", "path": "/prop1", "value": "v1"}]
        ),
        _patch("patch add min_ram", "full", [{"op": "add", "path": "/min_ram", "value": 128}]),
        _patch(
            "patch min_ram string", "full", [{"op": "replace", "path": "/min_ram", "value": "x"}]
        ),
        _patch(
            "patch min_disk negative",
            "full",
            [{"op": "replace", "path": "/min_disk", "value": -1}],
            accept=JSON,
        ),
        _patch(
            "patch visibility public (member)",
            "full",
            [{"op": "replace", "path": "/visibility", "value": "public"}],
        ),
        _patch(
            "patch visibility community",
            "full",
            [{"op": "replace", "path": "/visibility", "value": "community"}],
        ),
        _patch(
            "patch visibility private",
            "full",
            [{"op": "replace", "path": "/visibility", "value": "private"}],
        ),
        _patch(
            "patch visibility bogus",
            "full",
            [{"op": "replace", "path": "/visibility", "value": "bogus"}],
        ),
        _patch("patch status", "full", [{"op": "replace", "path": "/status", "value": "active"}]),
        _patch(
            "patch id", "full", [{"op": "replace", "path": "/id", "value": UNKNOWN_ID}], accept=JSON
        ),
        _patch("patch size", "full", [{"op": "replace", "path": "/size", "value": 1}]),
        _patch(
            "patch checksum", "full", [{"op": "replace", "path": "/checksum", "value": "0" * 32}]
        ),
        _patch(
            "patch created_at",
            "full",
            [{"op": "replace", "path": "/created_at", "value": "2020-01-01T00:00:00Z"}],
        ),
        _patch(
            "patch owner (member)", "full", [{"op": "replace", "path": "/owner", "value": "p-b"}]
        ),
        _patch("patch remove name", "full", [{"op": "remove", "path": "/name"}]),
        _patch("patch remove min_ram", "full", [{"op": "remove", "path": "/min_ram"}], accept=JSON),
        _patch(
            "patch reserved os_glance",
            "full",
            [{"op": "add", "path": "/os_glance_x", "value": "v"}],
        ),
        _patch(
            "patch replace tags",
            "full",
            [{"op": "replace", "path": "/tags", "value": ["t1", "t2", "t3"]}],
        ),
        _patch("patch tags not list", "full", [{"op": "replace", "path": "/tags", "value": "t1"}]),
        _patch("patch add tags element", "full", [{"op": "add", "path": "/tags/-", "value": "t4"}]),
        _patch("patch path root", "full", [{"op": "replace", "path": "/", "value": "x"}]),
        _patch("patch path no slash", "full", [{"op": "replace", "path": "name", "value": "x"}]),
        _patch(
            "patch path nested",
            "full",
            [{"op": "replace", "path": "/name/x", "value": "x"}],
            accept=JSON,
        ),
        _patch("patch op test", "full", [{"op": "test", "path": "/name", "value": "cf-full"}]),
        _patch("patch op move", "full", [{"op": "move", "from": "/prop1", "path": "/prop3"}]),
        _patch("patch op missing", "full", [{"path": "/name", "value": "x"}]),
        _patch("patch value missing", "full", [{"op": "add", "path": "/prop5"}], accept=JSON),
        _patch("patch body not list", "full", {"op": "replace", "path": "/name", "value": "x"}),
        Req(
            "patch body not json",
            "PATCH",
            "/v2/images/{full}",
            data=b"[{",
            content_type=PATCH,
        ),
        _patch(
            "patch content-type json",
            "full",
            [{"op": "replace", "path": "/name", "value": "cf-full"}],
            content_type=JSON,
        ),
        _patch(
            "patch content-type json (json)",
            "full",
            [{"op": "replace", "path": "/name", "value": "cf-full"}],
            content_type=JSON,
            accept=JSON,
        ),
        _patch(
            "patch v2.0 format",
            "full",
            [{"replace": "/prop1", "value": "v1"}],
            content_type=PATCH_V20,
        ),
        _patch(
            "patch several ops",
            "full",
            [
                {"op": "add", "path": "/prop6", "value": "a"},
                {"op": "replace", "path": "/min_disk", "value": 2},
                {"op": "remove", "path": "/prop6"},
            ],
        ),
        _patch("patch as reader", "full", [{"op": "add", "path": "/p", "value": "r"}], "reader"),
        _patch("patch other project's", "bobimg", [{"op": "add", "path": "/p", "value": "a"}]),
        Req(
            "patch unknown image",
            "PATCH",
            f"/v2/images/{UNKNOWN_ID}",
            json=[{"op": "add", "path": "/p", "value": "a"}],
            content_type=PATCH,
        ),
        _patch(
            "patch as admin", "full", [{"op": "add", "path": "/by_admin", "value": "1"}], "admin"
        ),
        _patch(
            "patch protected not bool",
            "full",
            [{"op": "replace", "path": "/protected", "value": "yes"}],
        ),
        _patch("patch os_hidden", "full", [{"op": "replace", "path": "/os_hidden", "value": True}]),
        _patch(
            "patch os_hidden back",
            "full",
            [{"op": "replace", "path": "/os_hidden", "value": False}],
        ),
        _patch(
            "patch locations",
            "full",
            [
                {
                    "op": "add",
                    "path": "/locations/-",
                    "value": {"url": "file:///etc/passwd", "metadata": {}},
                }
            ],
        ),
        _patch(
            "patch disk_format queued",
            "full",
            [{"op": "replace", "path": "/disk_format", "value": "qcow2"}],
        ),
        _patch(
            "patch disk_format back",
            "full",
            [{"op": "replace", "path": "/disk_format", "value": "raw"}],
        ),
        _patch(
            "patch disk_format active",
            "up",
            [{"op": "replace", "path": "/disk_format", "value": "qcow2"}],
        ),
        _patch("patch name too long", "full", [{"op": "replace", "path": "/name", "value": LONG}]),
        _patch(
            "patch extra not string",
            "full",
            [{"op": "add", "path": "/prop7", "value": 5}],
            accept=JSON,
        ),
        _patch(
            "patch extra key too long", "full", [{"op": "add", "path": "/" + LONG, "value": "v"}]
        ),
        _patch("(clean-up) long key", "full", [{"op": "remove", "path": "/" + LONG}], quiet=True),
        _patch("patch name null", "minimal", [{"op": "replace", "path": "/name", "value": None}]),
        _patch("patch pointer escape", "full", [{"op": "add", "path": "/a~1b", "value": "v"}]),
        Req("show after patches", "GET", "/v2/images/{full}"),
    ]


def tags() -> list[Step]:
    """``PUT`` / ``DELETE /v2/images/{id}/tags/{tag}``."""
    tag = "/v2/images/{full}/tags"
    return [
        Req("tag add", "PUT", tag + "/t9"),
        Req("tag add again", "PUT", tag + "/t9"),
        Req("tag delete", "DELETE", tag + "/t9"),
        Req("tag delete again", "DELETE", tag + "/t9"),
        Req("tag delete again json", "DELETE", tag + "/t9", accept=JSON),
        Req("tag too long", "PUT", tag + "/" + LONG),
        Req("tag with space", "PUT", tag + "/with%20space"),
        Req("tag as reader", "PUT", tag + "/r", "reader"),
        Req("tag delete as reader", "DELETE", tag + "/t1", "reader"),
        Req("tag other project's", "PUT", "/v2/images/{bobimg}/tags/x"),
        Req("tag unknown image", "PUT", f"/v2/images/{UNKNOWN_ID}/tags/x", accept=JSON),
        Req("tag GET", "GET", tag + "/t1"),
        Req("show after tags", "GET", "/v2/images/{full}"),
    ]


def tasks() -> list[Step]:
    """Tasks of an image, the task list (administrators) and one task."""
    return [
        Req(
            "image tasks glance-direct", "GET", "/v2/images/{gd}/tasks", save={"task": "tasks.0.id"}
        ),
        Req("image tasks web-download", "GET", "/v2/images/{web}/tasks"),
        Req("image tasks copy as owner", "GET", "/v2/images/{up}/tasks"),
        Req("image tasks copy as admin", "GET", "/v2/images/{up}/tasks", "admin"),
        Req("image tasks none", "GET", "/v2/images/{full}/tasks"),
        Req("image tasks as reader", "GET", "/v2/images/{gd}/tasks", "reader"),
        Req("image tasks as admin", "GET", "/v2/images/{gd}/tasks", "admin"),
        Req("image tasks other project's", "GET", "/v2/images/{bobimg}/tasks"),
        Req("image tasks unknown", "GET", f"/v2/images/{UNKNOWN_ID}/tasks", accept=JSON),
        Req("tasks list as admin", "GET", "/v2/tasks", "admin"),
        Req("tasks list as member", "GET", "/v2/tasks"),
        Req("tasks list status success", "GET", "/v2/tasks?status=success", "admin"),
        Req("tasks list status bogus", "GET", "/v2/tasks?status=bogus", "admin"),
        Req("tasks list type import", "GET", "/v2/tasks?type=import", "admin"),
        Req("tasks list type api_image_import", "GET", "/v2/tasks?type=api_image_import", "admin"),
        Req("tasks list type bogus", "GET", "/v2/tasks?type=bogus", "admin", accept=JSON),
        Req("tasks list limit", "GET", "/v2/tasks?limit=1", "admin", save={"tm": "tasks.0.id"}),
        Req("tasks list marker", "GET", "/v2/tasks?limit=1&marker={tm}", "admin"),
        Req("tasks list marker unknown", "GET", f"/v2/tasks?marker={UNKNOWN_ID}", "admin"),
        Req("tasks list sort", "GET", "/v2/tasks?sort_key=status&sort_dir=asc", "admin"),
        Req("tasks list sort bogus", "GET", "/v2/tasks?sort_key=bogus", "admin"),
        Req("tasks list sort_dir bogus", "GET", "/v2/tasks?sort_dir=sideways", "admin"),
        Req("task show as admin", "GET", "/v2/tasks/{task}", "admin"),
        Req("task show as member", "GET", "/v2/tasks/{task}"),
        Req("task show unknown", "GET", f"/v2/tasks/{UNKNOWN_ID}", "admin", accept=JSON),
    ]


def info() -> list[Step]:
    """Discovery: import methods, stores, stores detail, usage."""
    return [
        Req("info import", "GET", "/v2/info/import"),
        Req("info import as reader", "GET", "/v2/info/import", "reader"),
        Req("info stores", "GET", "/v2/info/stores"),
        Req("info stores as admin", "GET", "/v2/info/stores", "admin"),
        Req("info stores detail as admin", "GET", "/v2/info/stores/detail", "admin"),
        Req("info stores detail as member", "GET", "/v2/info/stores/detail"),
        Req("info usage", "GET", "/v2/info/usage"),
        Req("info usage as admin", "GET", "/v2/info/usage", "admin"),
        Req("info unknown", "GET", "/v2/info/bogus", accept=JSON),
    ]


def deletes() -> list[Step]:
    """Deletion: protected, as reader, other project's, twice; deleting stored data."""
    return [
        Req("delete protected", "DELETE", "/v2/images/{prot}"),
        Req("delete protected json", "DELETE", "/v2/images/{prot}", accept=JSON),
        _patch("unprotect", "prot", [{"op": "replace", "path": "/protected", "value": False}]),
        Req("delete unprotected", "DELETE", "/v2/images/{prot}"),
        Req("delete as reader", "DELETE", "/v2/images/{del}", "reader"),
        Req("delete other project's", "DELETE", "/v2/images/{del}", "bob"),
        Req("delete", "DELETE", "/v2/images/{del}"),
        Req("delete again", "DELETE", "/v2/images/{del}"),
        Req("show deleted", "GET", "/v2/images/{del}"),
        Req("download deleted", "GET", "/v2/images/{del}/file"),
        Req("patch deleted", "PATCH", "/v2/images/{del}", json=[], content_type=PATCH),
        Req("members of deleted", "GET", "/v2/images/{del}/members"),
        Req("delete as admin other project's", "DELETE", "/v2/images/{bobimg}", "admin"),
        Req("delete image with data", "DELETE", "/v2/images/{upq}"),
        Req("delete unknown", "DELETE", f"/v2/images/{UNKNOWN_ID}", accept=JSON),
        Req("delete shared with members", "DELETE", "/v2/images/{shared}"),
        Req("list after deletes", "GET", "/v2/images"),
        Req("list after deletes admin", "GET", "/v2/images", "admin"),
    ]


def scenario() -> list[Step]:
    """The whole sequence, in order."""
    return [
        *versions(),
        *negotiation(),
        *schemas(),
        *auth(),
        *create(),
        *show(),
        *data(),
        *copy_image(),
        *downloads(),
        *deactivation(),
        *members(),
        *listing(),
        *patches(),
        *tags(),
        *tasks(),
        *info(),
        *deletes(),
    ]
