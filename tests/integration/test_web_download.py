"""web-download against real HTTP(S) servers on 127.0.0.1: every manifest URL scenario and more.

Scenario URLs name public hosts (``images.example.com``) that a stub resolver maps to the
manifest's public address; the test network backend (`LoopbackNetwork`) then carries a
connection to that *vetted* address to a server on 127.0.0.1 and refuses every other
destination, so nothing here can leave the machine, and each test can assert exactly where
the pinned transport tried to connect.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import hashlib
import http.server
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpcore
import httpx
import pytest

from imageport.config import Settings
from imageport.errors import (
    ConfigurationError,
    InvalidRequest,
    SizeLimitExceeded,
    SourceNotFound,
    SourceUnavailable,
)
from imageport.pipeline import runner
from imageport.pipeline.context import Services, build_http_client
from imageport.pipeline.data.sources import http_stream
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.records import TaskStatus, repository, serialize
from images import MIB, file_digests, leftover_files, make_qcow2

BUILDER = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "build_corpus.py"
PUBLIC = "93.184.215.14"  # the manifest's "some public address"; never really contacted
LOOPBACK = ("127.0.0.0/8",)


# A real server on 127.0.0.1 -------------------------------------------------------------------


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a trickling handler must not hold up the test's teardown

    def handle_error(self, request, client_address):
        pass  # clients hang up on purpose here (deadline, cap, refused certificate)


class Server:
    """An HTTP server on 127.0.0.1 that answers each path with a function of the handler."""

    def __init__(self, tls: ssl.SSLContext | None = None):
        self.routes = {}
        self.requests = []  # (path, headers) as received, in order
        routes, requests = self.routes, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                requests.append((self.path, dict(self.headers.items())))
                route = routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_error(404)
                    return
                with contextlib.suppress(OSError):
                    route(self)

            def log_message(self, *args):
                pass

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_port
        # A short poll interval: shutdown() waits up to one interval, once per test.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def redirect(status, location):
    def answer(handler):
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


def body(data, *, headers=(), status=200, ranges=False):
    """Answer ``data``; with ``ranges`` honour ``Range: bytes=N-`` as a 206."""

    def answer(handler):
        start, code, extra = 0, status, dict(headers)
        wanted = handler.headers.get("Range", "")
        if ranges and wanted.startswith("bytes="):
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            code = 206
            extra["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        handler.send_response(code)
        extra.setdefault("Content-Length", str(len(data) - start))
        for name, value in extra.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data[start:])

    return answer


def raw(*parts, pause=0.0, repeat=1):
    """Write ``parts`` to the socket as they are (``repeat`` times, ``pause`` s apart)."""

    def answer(handler):
        for _ in range(repeat):
            for part in parts:
                handler.wfile.write(part)
                handler.wfile.flush()
                if pause:
                    time.sleep(pause)

    return answer


@pytest.fixture
def server():
    started = Server()
    yield started
    started.close()


# The test network and resolver -----------------------------------------------------------------


class LoopbackNetwork(httpcore.NetworkBackend):
    """Records every connect; carries ``routes`` (public address -> 127.0.0.1), refuses the rest."""

    def __init__(self, routes=None):
        self.routes = dict(routes or {})
        self.connects = []
        self._real = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.connects.append((host, port))
        target = self.routes.get(host, host)
        if not ipaddress.ip_address(target).is_loopback:
            raise httpcore.ConnectError(f"test network: {host} is not routed to 127.0.0.1")
        return self._real.connect_tcp(target, port, timeout, local_address, socket_options)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):  # noqa: ARG002
        raise httpcore.ConnectError("test network: no unix sockets")

    def sleep(self, seconds):
        time.sleep(seconds)


class Resolver:
    """A stub resolver: a fixed answer per name, or a sequence of answers (one per lookup)."""

    def __init__(self, answers=None, sequences=None):
        self.answers = dict(answers or {})
        self.sequences = {k: list(v) for k, v in (sequences or {}).items()}
        self.calls = []

    def __call__(self, host, port):  # noqa: ARG002 - the resolver signature
        self.calls.append(host)
        if host in self.sequences:
            return self.sequences[host].pop(0)
        return self.answers[host]


def make_client(port, *, resolver=None, network=None, loopback=False, **settings):
    conf = Settings(
        web_download_ports=(80, 443, port),
        web_download_allowed_networks=LOOPBACK if loopback else (),
        **settings,
    )
    network = network if network is not None else LoopbackNetwork()
    client = build_http_client(conf, resolver=resolver or Resolver(), network_backend=network)
    return client, network


def fetch(client, url, *, deadline=30.0, max_bytes=64 * MIB, max_redirects=5, offset=0):
    with http_stream(
        client,
        url,
        deadline_seconds=deadline,
        max_bytes=max_bytes,
        max_redirects=max_redirects,
        offset=offset,
    ) as (info, chunks):
        return info, b"".join(bytes(chunk) for chunk in chunks)


def public_client(server, **kw):
    """A client for scenario URLs: images.example.com is PUBLIC, which leads to ``server``."""
    resolver = kw.pop("resolver", None) or Resolver({"images.example.com": [PUBLIC]})
    network = LoopbackNetwork({PUBLIC: "127.0.0.1"})
    return make_client(server.port, resolver=resolver, network=network, **kw)


# The manifest's scenarios ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The manifest plus the one image a scenario serves (the gzip bomb), built quickly."""
    if not BUILDER.is_file() or shutil.which("qemu-img") is None:
        if os.environ.get("CI"):
            pytest.fail(f"{BUILDER} and qemu-img are required in CI")
        pytest.skip(f"{BUILDER} or qemu-img not available")
    out = tmp_path_factory.mktemp("corpus-web")
    command = [sys.executable, str(BUILDER), str(out), "--no-qemu-info"]
    subprocess.run([*command, "--only", "gzip_bomb_isize_wrap"], check=True, capture_output=True)
    manifest = json.loads((out / "manifest.json").read_text())
    return out, {s["name"]: s for s in manifest["url_scenarios"]}


def test_every_manifest_scenario_has_a_test_here(corpus):
    _, scenarios = corpus
    assert set(scenarios) == {
        "redirect_to_metadata",
        "redirect_to_file_scheme",
        "redirect_loop",
        "dns_rebinding",
        "content_encoding_bomb",
        "content_length_lies",
        "slowloris_body",
    }
    for name in scenarios:
        assert callable(globals()[f"test_scenario_{name}"])


def _path(scenario):
    return httpx.URL(scenario["url"]).path


def _local(scenario, server):
    """The scenario's URL on the test server's port (plain http: no certificate needed)."""
    url = httpx.URL(scenario["url"])
    return str(url.copy_with(scheme="http", port=server.port))


def test_scenario_redirect_to_metadata(corpus, server):
    scenario = corpus[1]["redirect_to_metadata"]
    answer = scenario["responses"][0]
    server.routes[_path(scenario)] = redirect(answer["status"], answer["location"])
    client, network = public_client(server, resolver=Resolver(scenario["resolver"]))

    with pytest.raises(InvalidRequest) as refused:
        fetch(client, _local(scenario, server))

    assert refused.value.code == "url_address"
    assert "169.254.169.254" in str(refused.value)
    assert network.connects == [(PUBLIC, server.port)]  # never a connect to the metadata IP


def test_scenario_redirect_to_file_scheme(corpus, server):
    scenario = corpus[1]["redirect_to_file_scheme"]
    answer = scenario["responses"][0]
    server.routes[_path(scenario)] = redirect(answer["status"], answer["location"])
    client, network = public_client(server, resolver=Resolver(scenario["resolver"]))

    with pytest.raises(InvalidRequest) as refused:
        fetch(client, _local(scenario, server))

    assert refused.value.code == "url_scheme"
    assert network.connects == [(PUBLIC, server.port)]


def test_scenario_redirect_loop(corpus, server):
    scenario = corpus[1]["redirect_loop"]
    url = _local(scenario, server)
    server.routes[_path(scenario)] = redirect(302, url)  # to itself, for as long as asked
    client, _ = public_client(server, resolver=Resolver(scenario["resolver"]))

    with pytest.raises(InvalidRequest) as refused:
        fetch(client, url)

    assert refused.value.code == "url_redirects"
    assert "loop" in str(refused.value)
    assert len(server.requests) == 1  # a redirect back to a URL already fetched: stop there


def test_more_redirects_than_allowed_are_refused_and_each_hop_is_resolved_once(server):
    for hop in range(7):
        server.routes[f"/c{hop}"] = redirect(302, f"/c{hop + 1}")
    server.routes["/c7"] = body(b"image")
    resolver = Resolver({"images.example.com": [PUBLIC]})
    client, network = public_client(server, resolver=resolver)

    with pytest.raises(InvalidRequest) as refused:
        fetch(client, f"http://images.example.com:{server.port}/c0", max_redirects=5)

    assert refused.value.code == "url_redirects"
    assert [path for path, _ in server.requests] == [f"/c{hop}" for hop in range(6)]
    assert resolver.calls == ["images.example.com"] * 6  # once per hop, never twice
    assert network.connects == [(PUBLIC, server.port)] * 6


def test_exactly_the_allowed_number_of_redirects_is_followed(server):
    for hop in range(5):
        server.routes[f"/c{hop}"] = redirect(307, f"/c{hop + 1}")
    server.routes["/c5"] = body(b"image")
    client, _ = public_client(server)

    _, data = fetch(client, f"http://images.example.com:{server.port}/c0", max_redirects=5)

    assert data == b"image"


def test_scenario_dns_rebinding(corpus, server):
    scenario = corpus[1]["dns_rebinding"]
    host = httpx.URL(scenario["url"]).host
    server.routes[_path(scenario)] = body(b"the image from the vetted address")
    resolver = Resolver(sequences=scenario["resolver_sequence"])  # public, then 127.0.0.1
    client, network = public_client(server, resolver=resolver)

    _, data = fetch(client, _local(scenario, server))

    assert data == b"the image from the vetted address"
    assert resolver.calls == [host]  # resolved once: the 127.0.0.1 answer is never asked for
    assert network.connects == [(PUBLIC, server.port)]  # connected to what was checked
    assert server.requests[0][1]["Host"] == f"{host}:{server.port}"  # the name, not the IP


def test_a_rebinding_answer_on_a_later_hop_is_checked_like_the_first(server):
    server.routes["/hop"] = redirect(302, "/disk.img")
    server.routes["/disk.img"] = body(b"never")
    resolver = Resolver(sequences={"rebind.example.com": [[PUBLIC], ["127.0.0.1"]]})
    client, network = public_client(server, resolver=resolver)

    with pytest.raises(InvalidRequest) as refused:
        fetch(client, f"http://rebind.example.com:{server.port}/hop")

    assert refused.value.code == "url_address"
    assert resolver.calls == ["rebind.example.com", "rebind.example.com"]
    assert network.connects == [(PUBLIC, server.port)]  # the second hop never connected


def test_scenario_content_encoding_bomb(corpus, server):
    root, scenarios = corpus
    scenario = scenarios["content_encoding_bomb"]
    answer = scenario["responses"][0]
    bomb = (root / answer["body_file"]).read_bytes()
    server.routes[_path(scenario)] = body(bomb, headers=answer["headers"])
    client, _ = public_client(server, resolver=Resolver(scenario["resolver"]))

    _, data = fetch(client, _local(scenario, server), max_bytes=8 * MIB)

    # Stored exactly as sent: 4 MiB of gzip, not 4 GiB of zeros; staging's capped
    # decompression decides about it, not httpx.
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(bomb).hexdigest()
    assert data[:2] == b"\x1f\x8b"
    assert server.requests[0][1]["Accept-Encoding"] == "identity"


def test_chained_gzip_encoding_is_not_undone(server):
    payload = gzip.compress(gzip.compress(b"\0" * MIB))
    server.routes["/disk.img"] = body(payload, headers={"Content-Encoding": "gzip, gzip"})
    client, _ = public_client(server)

    _, data = fetch(client, f"http://images.example.com:{server.port}/disk.img")

    assert data == payload


def test_scenario_content_length_lies(corpus, server):
    scenario = corpus[1]["content_length_lies"]
    # Declares 1024 bytes, then keeps sending (64 MiB here rather than 2 GiB: same point).
    server.routes[_path(scenario)] = raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n",
        b"\xaa" * MIB,
        repeat=64,
    )
    client, _ = public_client(server, resolver=Resolver(scenario["resolver"]))

    info, data = fetch(client, _local(scenario, server), max_bytes=4 * MIB)

    # HTTP framing ends the body at the declared length: the surplus is never read, so it can
    # neither pass the cap nor be taken for image bytes.
    assert info.length == 1024
    assert data == b"\xaa" * 1024


def test_a_body_longer_than_the_cap_is_refused_by_counting(server):
    # No Content-Length (the body ends when the server closes): only counting can stop it.
    server.routes["/disk.img"] = raw(b"HTTP/1.0 200 OK\r\n\r\n", b"\xaa" * MIB, repeat=64)
    client, _ = public_client(server)
    received = 0

    opened = http_stream(
        client,
        f"http://images.example.com:{server.port}/disk.img",
        deadline_seconds=30,
        max_bytes=4 * MIB,
    )
    with pytest.raises(SizeLimitExceeded) as refused, opened as (info, chunks):  # noqa: PT012
        assert info.length is None
        for chunk in chunks:  # counts what was handed out before the refusal
            received += len(chunk)

    assert refused.value.code == "upload_limit"
    assert received <= 4 * MIB


def test_a_declared_length_above_the_cap_is_refused_before_reading(server):
    server.routes["/disk.img"] = raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2147483648\r\n\r\n", b"\0" * 1024
    )
    client, _ = public_client(server)

    with pytest.raises(SizeLimitExceeded) as refused:
        fetch(client, f"http://images.example.com:{server.port}/disk.img", max_bytes=MIB)

    assert refused.value.code == "upload_limit"


def test_a_body_shorter_than_declared_is_a_broken_download_not_an_image(server):
    server.routes["/disk.img"] = raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n", b"\0" * 1024
    )
    client, _ = public_client(server)

    with pytest.raises(SourceUnavailable, match="broke off"):
        fetch(client, f"http://images.example.com:{server.port}/disk.img")


def test_scenario_slowloris_body(corpus, server):
    scenario = corpus[1]["slowloris_body"]
    rate = scenario["responses"][0]["trickle_bytes_per_second"]
    server.routes[_path(scenario)] = raw(
        b"HTTP/1.0 200 OK\r\n\r\n", b"x", pause=1 / rate, repeat=600
    )
    client, _ = public_client(server, resolver=Resolver(scenario["resolver"]))
    started = time.monotonic()

    with pytest.raises(SourceUnavailable, match="deadline"):
        fetch(client, _local(scenario, server), deadline=2.5)

    # Every read waits at most for the time left, so the overshoot is milliseconds, not a
    # read timeout (60 s) per byte.
    assert 2.5 <= time.monotonic() - started < 3.5


def test_slow_headers_hit_the_deadline_too(server):
    server.routes["/disk.img"] = raw(*[bytes([c]) for c in b"HTTP/1.0 200 OK\r\n"], pause=0.5)
    client, _ = public_client(server)
    started = time.monotonic()

    with pytest.raises(SourceUnavailable, match="deadline"):
        fetch(client, f"http://images.example.com:{server.port}/disk.img", deadline=1.5)

    assert time.monotonic() - started < 2.5


# Loopback only when the operator says so -----------------------------------------------------


def test_loopback_is_refused_without_explicit_settings(server):
    server.routes["/disk.img"] = body(b"local")
    url = f"http://127.0.0.1:{server.port}/disk.img"
    network = LoopbackNetwork()
    plain = build_http_client(Settings(), network_backend=network)

    with pytest.raises(InvalidRequest) as refused:
        fetch(plain, url)
    assert refused.value.code == "url_port"  # the port is not 80/443 ...

    port_only, _ = make_client(server.port, network=network)
    with pytest.raises(InvalidRequest) as refused:
        fetch(port_only, url)
    assert refused.value.code == "url_address"  # ... and 127.0.0.1 is not public

    assert network.connects == []
    assert server.requests == []


def test_loopback_is_fetched_when_its_network_and_port_are_allowed(server):
    server.routes["/disk.img"] = body(b"local")
    client, network = make_client(server.port, loopback=True)

    _, data = fetch(client, f"http://127.0.0.1:{server.port}/disk.img")

    assert data == b"local"
    assert network.connects == [("127.0.0.1", server.port)]


def test_a_name_resolving_to_loopback_needs_the_same_explicit_settings(server):
    server.routes["/disk.img"] = body(b"local")
    resolver = Resolver({"localhost": ["127.0.0.1"]})
    refused_client, _ = make_client(server.port, resolver=resolver)
    allowed_client, _ = make_client(server.port, resolver=resolver, loopback=True)
    url = f"http://localhost:{server.port}/disk.img"

    with pytest.raises(InvalidRequest):
        fetch(refused_client, url)
    assert fetch(allowed_client, url)[1] == b"local"


def test_a_client_that_does_not_pin_is_refused(server):
    with httpx.Client() as plain, pytest.raises(ConfigurationError):
        fetch(plain, f"http://127.0.0.1:{server.port}/disk.img")
    assert server.requests == []


# Status codes, ranges, headers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [(404, SourceNotFound), (403, SourceNotFound), (503, SourceUnavailable), (304, SourceNotFound)],
)
def test_status_codes_map_to_the_error_tree(server, status, error):
    server.routes["/disk.img"] = body(b"", status=status)
    client, _ = make_client(server.port, loopback=True)

    with pytest.raises(error):
        fetch(client, f"http://127.0.0.1:{server.port}/disk.img")


def test_a_closed_port_is_a_transient_failure():
    client, _ = make_client(9, loopback=True)  # port 9 (discard) is closed here
    with pytest.raises(SourceUnavailable, match="cannot reach"):
        fetch(client, "http://127.0.0.1:9/disk.img")


def test_offset_is_requested_with_range_and_a_206_is_reported(server):
    data = bytes(range(256)) * 16
    server.routes["/disk.img"] = body(data, ranges=True)
    client, _ = make_client(server.port, loopback=True)

    info, rest = fetch(client, f"http://127.0.0.1:{server.port}/disk.img", offset=1000)

    assert server.requests[0][1]["Range"] == "bytes=1000-"
    assert info.start == 1000
    assert rest == data[1000:]


def test_a_server_ignoring_range_sends_everything_and_we_say_so(server):
    data = bytes(range(256)) * 16
    server.routes["/disk.img"] = body(data)
    client, _ = make_client(server.port, loopback=True)

    info, everything = fetch(client, f"http://127.0.0.1:{server.port}/disk.img", offset=1000)

    assert info.start == 0
    assert everything == data


def test_a_206_for_another_range_is_not_appended(server):
    server.routes["/disk.img"] = body(
        b"x" * 10, status=206, headers={"Content-Range": "bytes 0-9/10"}
    )
    client, _ = make_client(server.port, loopback=True)

    with pytest.raises(SourceUnavailable, match="Content-Range"):
        fetch(client, f"http://127.0.0.1:{server.port}/disk.img", offset=5)


def test_requests_carry_identity_encoding_and_no_cookies(server):
    server.routes["/disk.img"] = body(b"x", headers={"Set-Cookie": "session=secret; Path=/"})
    client, _ = make_client(server.port, loopback=True)

    fetch(client, f"http://127.0.0.1:{server.port}/disk.img")
    fetch(client, f"http://127.0.0.1:{server.port}/disk.img")

    first, second = (headers for _, headers in server.requests)
    assert first["Accept-Encoding"] == second["Accept-Encoding"] == "identity"
    assert "Cookie" not in second  # a shared worker client carries nothing between jobs


# TLS: pinned to the address, verified for the name ------------------------------------------


def _certificate(name):
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture
def tls_server(tmp_path):
    def start(name):
        cert_pem, key_pem = _certificate(name)
        (tmp_path / "cert.pem").write_bytes(cert_pem)
        (tmp_path / "key.pem").write_bytes(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
        names = []
        context.sni_callback = lambda _sock, sni, _ctx: names.append(sni)
        started = Server(tls=context)
        started.sni = names
        trust = ssl.create_default_context(cadata=cert_pem.decode())
        servers.append(started)
        return started, trust

    servers = []
    yield start
    for started in servers:
        started.close()


def test_tls_keeps_the_name_for_sni_and_certificate_while_connecting_to_the_vetted_ip(
    tls_server,
):
    server, trust = tls_server("images.example.com")
    server.routes["/disk.img"] = body(b"over tls")
    network = LoopbackNetwork({PUBLIC: "127.0.0.1"})
    conf = Settings(web_download_ports=(443, server.port))
    client = build_http_client(
        conf,
        resolver=Resolver({"images.example.com": [PUBLIC]}),
        ssl_context=trust,
        network_backend=network,
    )

    _, data = fetch(client, f"https://images.example.com:{server.port}/disk.img")

    assert data == b"over tls"
    assert network.connects == [(PUBLIC, server.port)]
    assert server.sni == ["images.example.com"]
    assert server.requests[0][1]["Host"] == f"images.example.com:{server.port}"


def test_tls_refuses_a_certificate_for_another_name(tls_server):
    server, trust = tls_server("other.example.com")
    server.routes["/disk.img"] = body(b"never")
    conf = Settings(web_download_ports=(443, server.port))
    client = build_http_client(
        conf,
        resolver=Resolver({"images.example.com": [PUBLIC]}),
        ssl_context=trust,
        network_backend=LoopbackNetwork({PUBLIC: "127.0.0.1"}),
    )

    with pytest.raises(SourceUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|hostname"):
        fetch(client, f"https://images.example.com:{server.port}/disk.img")
    assert server.requests == []


# A whole import through the pipeline -----------------------------------------------------------


def _import(services, url):
    request = ImportRequest(method="web-download", source=url, disk_format="qcow2")
    submitted = submit_import(services, request, name="web")
    return submitted, runner.run_import(services, submitted.task_id)


def _task(services, task_id):
    with services.db.session() as session:
        task = repository.get_task(session, task_id)
        return serialize.task_to_dict(task, repository.stage_runs(session, task_id))


def test_a_web_download_import_runs_end_to_end(services, tmp_path, server):
    src = make_qcow2(tmp_path / "disk.qcow2")
    server.routes["/disk.qcow2"] = body(src.read_bytes())
    md5, _ = file_digests(src)

    submitted, outcome = _import(services, f"http://127.0.0.1:{server.port}/disk.qcow2")

    assert outcome.status == TaskStatus.SUCCESS
    with services.db.session() as session:
        image = serialize.image_to_dict(repository.get_image(session, submitted.image_id))
    assert image["checksum"] == md5
    assert image["status"] == "active"


def test_a_web_download_import_of_a_refused_url_fails_at_once(tmp_path, database_url, server):
    server.routes["/disk.qcow2"] = body(b"never")
    conf = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        max_attempts=3,
        web_download_ports=(80, 443, server.port),  # the port, but not the loopback network
    )
    services = Services.from_settings(conf)
    services.db.upgrade()
    try:
        submitted, outcome = _import(services, f"http://127.0.0.1:{server.port}/disk.qcow2")
        task = _task(services, submitted.task_id)
    finally:
        services.close()

    assert outcome.status == TaskStatus.FAILURE  # permanent: no retry although 3 are allowed
    assert task["error_code"] == "url_address"
    assert "loopback" in task["message"]
    assert server.requests == []
    assert leftover_files(conf.resolved_staging_dir) == []


def test_an_encoded_bomb_is_stored_raw_and_refused_by_the_capped_decompression(
    corpus, tmp_path, database_url, server
):
    root, scenarios = corpus
    answer = scenarios["content_encoding_bomb"]["responses"][0]
    server.routes["/disk.img"] = body(
        (root / answer["body_file"]).read_bytes(), headers=answer["headers"]
    )
    conf = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        max_attempts=1,
        max_decompressed_bytes=64 * MIB,
        web_download_allowed_networks=LOOPBACK,
        web_download_ports=(server.port,),
    )
    services = Services.from_settings(conf)
    services.db.upgrade()
    try:
        request = ImportRequest(
            method="web-download",
            source=f"http://127.0.0.1:{server.port}/disk.img",
            disk_format="raw",
        )
        submitted = submit_import(services, request, name="bomb")
        outcome = runner.run_import(services, submitted.task_id)
        task = _task(services, submitted.task_id)
    finally:
        services.close()

    assert outcome.status == TaskStatus.FAILURE
    assert task["error_code"] == "decompression_limit"
    assert leftover_files(conf.resolved_staging_dir) == []
