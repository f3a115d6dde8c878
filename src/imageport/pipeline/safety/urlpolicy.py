"""Which URLs web-download may fetch: the SSRF policy, checked with httpx's own URL parser.

A URL is allowed when its scheme and port are in the allow-lists, it carries no userinfo, its
host is a DNS name or an IP literal in standard form, and *every* address the host resolves to
is global unicast (or inside a network the operator allowed explicitly). The host is resolved
once, here; the caller connects to the addresses returned in `VettedUrl` and nowhere else (see
`imageport.pipeline.safety.pinning`), so a second, different DNS answer can never be used.

Refusals are `InvalidRequest` errors whose ``code`` names the rule that failed:

=================  ==========================================================================
``url_invalid``    not an absolute http(s)-shaped URL, or raw characters no parser agrees on
``url_scheme``     scheme outside ``web_download_schemes`` (file, ftp, gopher ...)
``url_userinfo``   ``user:password@`` in the authority
``url_host``       host is not a DNS name or a standard IP literal (``127.1``, ``0x7f000001``,
                   ``017700000001``, zone ids, percent-encoding)
``url_port``       port outside ``web_download_ports``
``url_address``    an address the host resolves to is not global unicast
=================  ==========================================================================

Python's ``ipaddress.is_global`` alone is not enough: it calls multicast ``224.0.0.1``, the
6to4 address of loopback ``2002:7f00:1::``, NAT64 ``64:ff9b::7f00:1``, IPv4-compatible
``::7f00:1`` and the documentation range ``3fff::/20`` global. The explicit tables below are
checked first; ``is_global`` is only the final filter.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from imageport.config import Settings
from imageport.errors import ConfigurationError, InvalidRequest, SourceNotFound, SourceUnavailable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Resolves ``(host, port)`` to address strings; `system_resolver` in production, a stub in tests.
Resolver = Callable[[str, int], Sequence[str]]

DEFAULT_PORTS = {"http": 80, "https": 443}

# IANA special-purpose IPv4 registry, plus multicast and the reserved class E; each refused
# unless an operator allows it explicitly. 192.0.0.0/24 is refused whole (its two "globally
# reachable" /32s are anycast protocol addresses, never image servers).
_SPECIAL_IPV4: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), why)
    for net, why in (
        ("0.0.0.0/8", "'this network' (reaches the local host)"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("100.64.0.0/10", "shared address space (RFC 6598, carrier-grade NAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata services live here)"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation (TEST-NET-1)"),
        ("192.88.99.0/24", "deprecated 6to4 relay anycast"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("198.18.0.0/15", "benchmarking (RFC 2544)"),
        ("198.51.100.0/24", "documentation (TEST-NET-2)"),
        ("203.0.113.0/24", "documentation (TEST-NET-3)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved (class E, broadcast)"),
    )
)

# IPv6 ranges refused outright, first match wins (Teredo before the /23 that holds it).
# Everything outside 2000::/3 is refused anyway (not global unicast); 6to4 and NAT64 are
# unwrapped before this table is consulted.
_SPECIAL_IPV6: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), why)
    for net, why in (
        ("::1/128", "loopback"),
        # Deprecated ::a.b.c.d (RFC 4291 2.5.5.1): never a real server; is_global says True.
        ("::/96", "an IPv4-compatible IPv6 address (deprecated)"),
        ("2001::/32", "Teredo tunnel"),
        ("2001::/23", "IETF protocol assignments"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation (RFC 9637)"),
    )
)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")

# RFC 1123 host name label (after IDNA encoding, which httpx has already done in raw_host).
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
# A last label that WHATWG URL parsers (and inet_aton in getaddrinfo) would read as a number:
# decimal, 0x-hex or octal. ``http://2130706433/`` and ``http://127.1/`` both reach 127.0.0.1.
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)\Z")
# Characters that make URL parsers disagree (urllib vs WHATWG vs httpx): backslash, whitespace,
# controls. Refused anywhere in the raw string rather than reasoned about per component.
_AMBIGUOUS = re.compile(r"[\\\x00-\x20\x7f]")
# The authority of an absolute URL ("scheme://AUTH/...") or a network-path reference ("//AUTH").
_AUTHORITY = re.compile(r"(?:[a-zA-Z][a-zA-Z0-9+.-]*:)?//([^/?#]*)")


@dataclass(frozen=True)
class UrlPolicy:
    """The allow-lists web-download enforces; built from settings, immutable."""

    schemes: frozenset[str] = frozenset(DEFAULT_PORTS)
    ports: frozenset[int] = frozenset(DEFAULT_PORTS.values())
    #: Networks allowed although not global (e.g. 127.0.0.0/8 for tests); empty by default.
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlPolicy:
        """The policy in ``settings`` (``web_download_*``).

        Raises:
            ConfigurationError: an entry of ``web_download_allowed_networks`` is not a CIDR.
        """
        networks: list[IPNetwork] = []
        for cidr in settings.web_download_allowed_networks:
            try:
                # strict=False: "127.0.0.1/8" means 127.0.0.0/8, as operators usually intend.
                networks.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError as exc:
                raise ConfigurationError(
                    f"web_download_allowed_networks: {cidr!r} is not a network in CIDR form"
                ) from exc
        return cls(
            schemes=frozenset(s.lower() for s in settings.web_download_schemes),
            ports=frozenset(settings.web_download_ports),
            allowed_networks=tuple(networks),
        )

    def allows_network(self, address: IPAddress) -> bool:
        """Whether ``address`` is inside a network the operator allowed explicitly."""
        return any(address in network for network in self.allowed_networks)


@dataclass(frozen=True)
class VettedUrl:
    """A URL that passed every check, with the only addresses it may be fetched from."""

    url: httpx.URL
    host: str  # as the connection layer sees it: IDNA-encoded name or bare IP literal
    port: int
    addresses: tuple[str, ...]  # resolved once, all checked; connect to these only


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the system resolver (``getaddrinfo``), TCP addresses only."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    # dict.fromkeys: drop duplicates, keep the resolver's order (it is the preference order).
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_url(raw: str, *, base: httpx.URL | None = None) -> httpx.URL:
    """Parse ``raw`` (relative to ``base`` for a redirect's Location) with httpx's parser.

    Raises:
        InvalidRequest: ``url_invalid`` or ``url_userinfo`` (found in the raw authority).
    """
    if _AMBIGUOUS.search(raw):
        raise _refused("url_invalid", raw, "contains a backslash, a space or a control character")
    try:
        url = base.join(raw) if base is not None else httpx.URL(raw)
    except httpx.InvalidURL as exc:
        raise _refused("url_invalid", raw, f"cannot be parsed ({exc})") from exc
    # httpx drops an empty userinfo ("http://@host/"); the raw authority still shows it.
    if "@" in _raw_authority(raw):
        raise _refused("url_userinfo", raw, "has user information before '@'; remove it")
    return url


def vet(url: httpx.URL | str, policy: UrlPolicy, resolver: Resolver) -> VettedUrl:
    """Check ``url`` against ``policy``, resolving its host exactly once.

    Raises:
        InvalidRequest: the URL is refused; ``code`` is one of the ``url_*`` codes above.
        SourceNotFound: the host name does not exist.
        SourceUnavailable: name resolution failed temporarily.
    """
    if isinstance(url, str):
        url = parse_url(url)
    text = str(url)
    # DEFAULT_PORTS too: http and https are all this client speaks, whatever the settings say.
    if url.scheme not in policy.schemes or url.scheme not in DEFAULT_PORTS:
        allowed = ", ".join(sorted(policy.schemes & DEFAULT_PORTS.keys()))
        raise _refused("url_scheme", text, f"scheme {url.scheme!r} is not allowed ({allowed})")
    if url.userinfo:
        raise _refused("url_userinfo", text, "has user information before '@'; remove it")
    host = url.raw_host.decode("ascii")
    literal = _host_literal(host, text)
    port = url.port if url.port is not None else DEFAULT_PORTS[url.scheme]
    if port not in policy.ports:
        allowed = ", ".join(str(p) for p in sorted(policy.ports))
        raise _refused("url_port", text, f"port {port} is not allowed (allowed: {allowed})")
    answers = [str(literal)] if literal is not None else _resolve(resolver, host, port, text)
    for answer in answers:
        why = address_refusal(_parse_address(answer, text), policy)
        if why is not None:
            where = (
                f"{host} is" if literal is not None else f"{host} resolves to {answer}, which is"
            )
            raise _refused("url_address", text, f"{where} {why}")
    return VettedUrl(url=url, host=host, port=port, addresses=tuple(answers))


def address_refusal(address: IPAddress, policy: UrlPolicy) -> str | None:
    """Why ``address`` may not be fetched from, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:a.b.c.d is the IPv4 host itself to the kernel: judge it as IPv4.
        address = address.ipv4_mapped
    # Never allowed, whatever the operator's networks: no server answers TCP there, and
    # 0.0.0.0 / :: connect to the local host.
    if address.is_unspecified:
        return "the unspecified address (reaches the local host)"
    if address.is_multicast:
        return "multicast"
    if policy.allows_network(address):
        return None
    if isinstance(address, ipaddress.IPv4Address):
        return _ipv4_refusal(address)
    return _ipv6_refusal(address)


def _ipv4_refusal(address: ipaddress.IPv4Address) -> str | None:
    for network, why in _SPECIAL_IPV4:
        if address in network:
            return why
    return None if address.is_global else "not globally routable"


def _ipv6_refusal(address: ipaddress.IPv6Address) -> str | None:
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        # 6to4 and NAT64 route to the IPv4 address inside: it must be public itself.
        inner = _ipv4_refusal(embedded)
        return None if inner is None else f"a tunnel to {embedded}, which is {inner}"
    if address.scope_id:
        return "scoped to a local interface"
    why = next((why for network, why in _SPECIAL_IPV6 if address in network), None)
    if why is None and address not in _GLOBAL_UNICAST_V6:
        why = "not global unicast (outside 2000::/3: link-local, ULA, reserved ...)"
    if why is None and not address.is_global:
        why = "not globally routable"
    return why


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    if address in _NAT64_WELL_KNOWN:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def _host_literal(host: str, url: str) -> IPAddress | None:
    """The IP literal ``host`` stands for, None for a DNS name; refuse non-standard forms."""
    if not host:
        raise _refused("url_invalid", url, "has no host")
    if ":" in host:
        # httpx has already required brackets; a zone id arrives percent-encoded ("%25eth0").
        try:
            v6 = ipaddress.IPv6Address(host)
        except ValueError:
            raise _refused("url_host", url, f"host [{host}] is not a plain IPv6 address") from None
        if v6.scope_id:
            raise _refused("url_host", url, "IPv6 zone ids are not allowed")
        return v6
    labels = host.removesuffix(".").split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        # Numeric last label: an IPv4 literal, accepted only as four plain decimal octets.
        try:
            v4 = ipaddress.IPv4Address(host)
        except ValueError:
            v4 = None
        if v4 is None or str(v4) != host:
            raise _refused(
                "url_host", url, f"host {host!r} is not a standard dotted-decimal IPv4 address"
            )
        return v4
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise _refused("url_host", url, f"host {host!r} is not a valid DNS name")
    return None


def _resolve(resolver: Resolver, host: str, port: int, url: str) -> list[str]:
    try:
        answers = list(resolver(host, port))
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise SourceUnavailable(f"cannot resolve {host} right now ({exc}); will retry") from exc
        raise SourceNotFound(f"{url}: host {host} does not resolve ({exc})") from exc
    except OSError as exc:
        raise SourceUnavailable(f"cannot resolve {host} ({exc}); will retry") from exc
    if not answers:
        raise SourceNotFound(f"{url}: host {host} has no addresses")
    return answers


def _parse_address(answer: str, url: str) -> IPAddress:
    try:
        return ipaddress.ip_address(answer)
    except ValueError as exc:
        raise _refused("url_address", url, f"resolver answered {answer!r}, not an IP") from exc


def _raw_authority(raw: str) -> str:
    """The authority of ``raw`` as written (empty for a relative reference)."""
    match = _AUTHORITY.match(raw)
    return match.group(1) if match else ""


def _refused(code: str, url: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"web-download refused {url}: {why}", code=code)
