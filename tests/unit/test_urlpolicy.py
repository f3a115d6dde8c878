"""The web-download URL policy: every manifest URL case through the validator, stub resolver."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from imageport.config import Settings
from imageport.errors import (
    ConfigurationError,
    InvalidRequest,
    SourceNotFound,
    SourceUnavailable,
)
from imageport.pipeline.safety.urlpolicy import UrlPolicy, address_refusal, parse_url, vet

BUILDER = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "build_corpus.py"

#: Our verdict for every manifest URL case: "allow", or the refusal code. A new manifest case
#: fails `test_every_manifest_case_is_classified` until it is added here on purpose.
EXPECTED = {
    "https://images.example.com/cirros.qcow2": "allow",
    "http://93.184.215.14/cirros.img": "allow",
    "http://169.254.169.254/latest/meta-data/": "url_address",
    "http://[fd00:ec2::254]/latest/meta-data/": "url_address",
    "http://metadata.google.internal/computeMetadata/v1/": "url_address",
    "http://127.0.0.1/": "url_address",
    "http://127.1/": "url_host",
    "http://2130706433/": "url_host",
    "http://0x7f000001/": "url_host",
    "http://017700000001/": "url_host",
    "http://0177.0.0.1/": "url_invalid",  # httpx's parser itself refuses leading-zero octets
    "http://[::1]/": "url_address",
    "http://[::ffff:127.0.0.1]/": "url_address",
    "http://[::ffff:a9fe:a9fe]/": "url_address",
    "http://0.0.0.0/": "url_address",
    "http://10.0.0.5/": "url_address",
    "http://172.16.0.1/": "url_address",
    "http://192.168.1.1/": "url_address",
    "http://100.64.0.1/": "url_address",
    "http://224.0.0.1/": "url_address",
    "http://[fe80::1%25eth0]/": "url_host",
    "http://[2001:db8::1]/": "url_address",
    "http://localhost/": "url_address",
    "http://mixed.example.com/": "url_address",
    "file:///etc/passwd": "url_scheme",
    "ftp://ftp.example.com/disk.img": "url_scheme",
    "gopher://127.0.0.1:6379/_INFO": "url_scheme",
    "https://images.example.com:22/x.img": "url_port",
    "https://images.example.com:8443/x.img": "url_port",
    "https://user:pass@images.example.com/x.img": "url_userinfo",
    "http://images.example.com\\@127.0.0.1/x.img": "url_invalid",
    "http://images.example.com%2F@127.0.0.1/x.img": "url_userinfo",
}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """The corpus manifest, built with no image cases (URL data only: fast, no qemu-img run)."""
    if not BUILDER.is_file() or shutil.which("qemu-img") is None:
        if os.environ.get("CI"):
            pytest.fail(f"{BUILDER} and qemu-img are required in CI")
        pytest.skip(f"{BUILDER} or qemu-img not available")
    out = tmp_path_factory.mktemp("corpus-urls")
    subprocess.run(
        [sys.executable, str(BUILDER), str(out), "--only", "no-image-cases", "--no-qemu-info"],
        check=True,
        capture_output=True,
    )
    return json.loads((out / "manifest.json").read_text())


class StubResolver:
    """Answers from a table and counts lookups; an unknown name is a test failure."""

    def __init__(self, table):
        self.table = table
        self.calls = []

    def __call__(self, host, port):
        self.calls.append((host, port))
        assert host in self.table, f"{host} must not be looked up for this case"
        return self.table[host]


def test_every_manifest_case_is_classified(manifest):
    cases = {case["url"]: case["verdict"] for case in manifest["url_cases"]}
    assert set(cases) == set(EXPECTED)
    for url, verdict in cases.items():
        assert verdict == ("allow" if EXPECTED[url] == "allow" else "reject"), url


def test_manifest_policy_is_our_default_policy(manifest):
    policy = UrlPolicy.from_settings(Settings())
    assert sorted(policy.schemes) == manifest["url_policy"]["schemes"]
    assert sorted(policy.ports) == manifest["url_policy"]["ports"]
    assert Settings().http_max_redirects == manifest["url_policy"]["max_redirects"]
    assert policy.allowed_networks == ()


@pytest.mark.parametrize("url", list(EXPECTED))
def test_manifest_url_case(manifest, url):
    case = next(c for c in manifest["url_cases"] if c["url"] == url)
    resolver = StubResolver(case.get("resolver", {}))
    expected = EXPECTED[url]

    if expected == "allow":
        vetted = vet(url, UrlPolicy(), resolver)
        host = vetted.url.host
        assert vetted.addresses == tuple(case.get("resolver", {}).get(host, [host]))
    else:
        with pytest.raises(InvalidRequest) as refused:
            vet(url, UrlPolicy(), resolver)
        assert refused.value.code == expected
        assert "web-download refused" in str(refused.value)
    assert len(resolver.calls) <= 1  # resolved once at most, and only when the rules need it


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("224.0.0.1", "multicast"),  # is_global is True for it
        ("239.255.255.250", "multicast"),
        ("2002:7f00:1::", "tunnel to 127.0.0.1"),  # 6to4 of loopback; is_global True
        ("2002:a9fe:a9fe::1", "tunnel to 169.254.169.254"),
        ("64:ff9b::7f00:1", "tunnel to 127.0.0.1"),  # NAT64 of loopback; is_global True
        ("64:ff9b::a00:1", "tunnel to 10.0.0.1"),
        ("::7f00:1", "IPv4-compatible"),  # is_global True
        ("3fff::1", "documentation"),  # RFC 9637; is_global True on this Python
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("2001:10::1", "IETF protocol assignments"),
        ("::ffff:10.0.0.1", "private"),
        ("::", "unspecified"),
        ("ff02::1", "multicast"),
        ("fe80::1", "not global unicast"),
        ("fc00::1", "not global unicast"),
        ("100::1", "not global unicast"),
        ("198.18.0.1", "benchmarking"),
        ("192.0.0.9", "IETF protocol assignments"),
        ("192.88.99.1", "6to4 relay"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("0.1.2.3", "this network"),
        ("203.0.113.9", "documentation"),
    ],
)
def test_addresses_python_calls_global_or_that_hide_another_are_refused(address, why):
    refusal = address_refusal(ipaddress.ip_address(address), UrlPolicy())
    assert refusal is not None
    assert why in refusal


@pytest.mark.parametrize(
    "address",
    ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "2002:5db8:d70e::1", "64:ff9b::5db8:d70e"],
)
def test_public_unicast_addresses_are_allowed(address):
    assert address_refusal(ipaddress.ip_address(address), UrlPolicy()) is None


def test_allowed_networks_widen_only_what_they_name():
    policy = UrlPolicy.from_settings(Settings(web_download_allowed_networks=("127.0.0.0/8",)))
    assert address_refusal(ipaddress.ip_address("127.0.0.1"), policy) is None
    assert address_refusal(ipaddress.ip_address("::ffff:127.0.0.2"), policy) is None
    assert address_refusal(ipaddress.ip_address("::1"), policy) == "loopback"
    assert address_refusal(ipaddress.ip_address("10.0.0.1"), policy) is not None
    assert address_refusal(ipaddress.ip_address("169.254.169.254"), policy) is not None


def test_unspecified_and_multicast_stay_refused_even_inside_an_allowed_network():
    policy = UrlPolicy.from_settings(Settings(web_download_allowed_networks=("0.0.0.0/0", "::/0")))
    assert "unspecified" in address_refusal(ipaddress.ip_address("0.0.0.0"), policy)  # noqa: S104
    assert "multicast" in address_refusal(ipaddress.ip_address("224.0.0.1"), policy)
    assert address_refusal(ipaddress.ip_address("10.0.0.1"), policy) is None


def test_a_bad_allowed_network_is_a_configuration_error():
    with pytest.raises(ConfigurationError):
        UrlPolicy.from_settings(Settings(web_download_allowed_networks=("localhost",)))


def test_settings_cannot_enable_a_scheme_the_client_does_not_speak():
    policy = UrlPolicy.from_settings(Settings(web_download_schemes=("https", "ftp")))
    with pytest.raises(InvalidRequest) as refused:
        vet("ftp://ftp.example.com/x", policy, StubResolver({}))
    assert refused.value.code == "url_scheme"
    with pytest.raises(InvalidRequest) as refused:
        vet("http://93.184.215.14/x", policy, StubResolver({}))
    assert refused.value.code == "url_scheme"


def test_ports_come_from_settings_and_default_ports_count():
    policy = UrlPolicy.from_settings(Settings(web_download_ports=(8080,)))
    assert vet("http://93.184.215.14:8080/x", policy, StubResolver({})).port == 8080
    with pytest.raises(InvalidRequest) as refused:
        vet("http://93.184.215.14/x", policy, StubResolver({}))  # implicit :80
    assert refused.value.code == "url_port"


def test_every_address_is_checked_and_all_are_kept_for_connecting():
    resolver = StubResolver({"two.example.com": ["93.184.215.14", "2606:4700::1111"]})
    vetted = vet("https://two.example.com/x", UrlPolicy(), resolver)
    assert vetted.addresses == ("93.184.215.14", "2606:4700::1111")
    assert (vetted.host, vetted.port) == ("two.example.com", 443)
    assert resolver.calls == [("two.example.com", 443)]


def test_internationalised_names_are_vetted_in_their_idna_form():
    resolver = StubResolver({"xn--bcher-kva.example": ["93.184.215.14"]})
    assert vet("http://bücher.example/x", UrlPolicy(), resolver).host == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://under_score.example.com/", "url_host"),
        ("http://-dash.example.com/", "url_host"),
        ("http://a%20b.example.com/", "url_host"),
        ("http://example.com/a b", "url_invalid"),
        ("http://@images.example.com/", "url_userinfo"),
        ("http:///x", "url_invalid"),
        ("http://1.2.3.4.5/", "url_host"),
        ("//images.example.com/x", "url_scheme"),
        ("/relative/path", "url_scheme"),
    ],
)
def test_malformed_urls_are_refused(url, code):
    with pytest.raises(InvalidRequest) as refused:
        vet(url, UrlPolicy(), StubResolver({}))
    assert refused.value.code == code


def test_redirect_locations_are_parsed_against_the_current_url():
    base = httpx.URL("https://images.example.com/a/b.img")
    assert str(parse_url("c.img", base=base)) == "https://images.example.com/a/c.img"
    assert str(parse_url("//other.example.com/x", base=base)) == "https://other.example.com/x"
    with pytest.raises(InvalidRequest) as refused:
        parse_url("//user@other.example.com/x", base=base)
    assert refused.value.code == "url_userinfo"
    with pytest.raises(InvalidRequest) as refused:
        parse_url("/x\\@127.0.0.1/", base=base)
    assert refused.value.code == "url_invalid"
    assert str(parse_url("/a/x@y.img", base=base)).endswith("/a/x@y.img")  # '@' in a path is fine


def test_name_resolution_failures_map_to_transient_or_permanent():
    def failing(errno):
        def resolve(host, port):
            raise socket.gaierror(errno, "stub")

        return resolve

    with pytest.raises(SourceUnavailable):
        vet("http://images.example.com/", UrlPolicy(), failing(socket.EAI_AGAIN))
    with pytest.raises(SourceNotFound):
        vet("http://images.example.com/", UrlPolicy(), failing(socket.EAI_NONAME))
    with pytest.raises(SourceNotFound):
        vet("http://images.example.com/", UrlPolicy(), StubResolver({"images.example.com": []}))
