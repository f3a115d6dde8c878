"""An httpx transport that checks every request's URL and connects only to the checked address.

Design: the transport, not its callers, runs `urlpolicy.vet` on ``request.url`` (the very
``httpx.URL`` object that is sent), which resolves the host once. It then opens a private
httpcore connection pool whose network backend connects to those vetted IP addresses and
refuses any other host or port. The URL is never rewritten, so httpcore still uses the *name*
for the ``Host`` header, for TLS SNI and for certificate verification; only the socket's
destination is pinned. Compared with swapping the IP into the URL and passing httpx's
``sni_hostname`` extension, nothing has to be kept in sync by hand (Host header, IPv6 brackets,
redirect bases, error messages), a caller cannot forget the pin, and a pooled connection made
for one name can never be reused for another name on the same IP: each request gets its own
pool and one connection, closed with the response. Web-download makes a handful of requests
per import, so the lost keep-alive costs nothing measurable.

Every socket read, write, connect and TLS handshake is also bounded by the request's overall
deadline (extension `DEADLINE_EXTENSION`, a `time.monotonic` instant): a server that trickles
headers or body one byte at a time is cut off at the deadline, not at deadline x chunks.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

from imageport.pipeline.safety.urlpolicy import Resolver, UrlPolicy, VettedUrl, system_resolver, vet

#: Request extension: the ``time.monotonic()`` instant after which no byte may be read.
DEADLINE_EXTENSION = "imageport.deadline"

DEFAULT_DEADLINE = 6 * 3600.0  # seconds; used when a request carries no deadline extension

# httpcore -> httpx exceptions, as httpx's own transport maps them (its table is private).
_EXCEPTIONS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
}


class PinnedTransport(httpx.BaseTransport):
    """Vet each request's URL with `urlpolicy.vet`, then connect only to the vetted addresses.

    Args:
        policy: the allow-lists to enforce.
        resolver: name resolution, called once per request; `system_resolver` by default.
        ssl_context: TLS settings; default: certifi roots, nothing from the environment.
        network_backend: where sockets come from (tests wrap it to record connect targets).
        default_deadline: seconds a request may take when it carries no deadline extension.
    """

    def __init__(
        self,
        policy: UrlPolicy,
        *,
        resolver: Resolver = system_resolver,
        ssl_context: ssl.SSLContext | None = None,
        network_backend: httpcore.NetworkBackend | None = None,
        default_deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self.policy = policy
        self._resolver = resolver
        self._ssl_context = ssl_context  # None: built on first use, see _tls()
        self._ssl_lock = threading.Lock()
        self._backend = network_backend or httpcore.SyncBackend()
        self._default_deadline = default_deadline

    def _tls(self) -> ssl.SSLContext:
        """The TLS context, the default one made on first use.

        Loading certifi's roots takes ~40 ms, paid at start-up by every command that opens
        the services, and most (a local-file import too) never connect anywhere.
        """
        with self._ssl_lock:
            if self._ssl_context is None:
                # trust_env=False: SSL_CERT_FILE / SSL_CERT_DIR from the env are not honoured.
                self._ssl_context = httpx.create_ssl_context(trust_env=False)
            return self._ssl_context

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Vet ``request.url``, then send the request over a connection to a vetted address.

        Raises:
            InvalidRequest: the URL is refused (``url_*`` codes); nothing was connected.
        """
        vetted = vet(request.url, self.policy, self._resolver)
        extensions = dict(request.extensions)
        deadline = float(
            extensions.pop(DEADLINE_EXTENSION, time.monotonic() + self._default_deadline)
        )
        # TLS must check the certificate against the URL's name: no caller-chosen SNI name.
        extensions.pop("sni_hostname", None)
        pool = httpcore.ConnectionPool(
            ssl_context=self._tls(),
            max_connections=1,
            max_keepalive_connections=0,
            network_backend=_PinnedBackend(vetted, self._backend, deadline),
        )
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=_body(request),
            extensions=extensions,
        )
        try:
            with _mapped_exceptions():
                core_response = pool.handle_request(core_request)
        except BaseException:
            pool.close()
            raise
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_PooledStream(core_response, pool),
            extensions=core_response.extensions,
        )


class _PooledStream(httpx.SyncByteStream):
    """A response body that closes its private pool (and so its socket) when closed."""

    def __init__(self, response: httpcore.Response, pool: httpcore.ConnectionPool) -> None:
        self._response = response
        self._pool = pool

    def __iter__(self) -> Iterator[bytes]:
        with _mapped_exceptions():
            yield from self._response.iter_stream()

    def close(self) -> None:
        try:
            with _mapped_exceptions():
                self._response.close()
        finally:
            self._pool.close()


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the vetted addresses of one origin, refuses everything else."""

    def __init__(self, vetted: VettedUrl, inner: httpcore.NetworkBackend, deadline: float) -> None:
        self._vetted = vetted
        self._inner = inner
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """Connect to the first vetted address that answers; ``host`` only names the origin.

        Raises:
            httpcore.ConnectError: ``host``/``port`` is not the vetted origin, or no address
                accepted the connection.
        """
        if (host, port) != (self._vetted.host, self._vetted.port):
            # Unreachable through PinnedTransport; guards against a pool reused elsewhere.
            raise httpcore.ConnectError(f"refusing {host}:{port}: not the vetted origin")
        failure: Exception = httpcore.ConnectError(f"{host} has no vetted address")
        for address in self._vetted.addresses:
            try:
                stream = self._inner.connect_tcp(
                    address,  # the vetted IP literal: no second DNS lookup can happen here
                    port,
                    timeout=_clamp(timeout, self._deadline, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc  # all addresses were vetted: trying the next one is safe
                continue
            return _DeadlineStream(stream, self._deadline)
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """Never: web-download only speaks TCP to vetted addresses.

        Raises:
            httpcore.ConnectError: always.
        """
        del timeout, socket_options  # part of httpcore's signature; nothing is connected
        raise httpcore.ConnectError(f"refusing unix socket {path}")

    def sleep(self, seconds: float) -> None:
        """Sleep between connect retries (the pool is built with none)."""
        self._inner.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every operation ends by the overall deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Read, waiting no longer than the read timeout or the time left, whichever is less."""
        return self._inner.read(max_bytes, _clamp(timeout, self._deadline, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Write, bounded like `read`."""
        self._inner.write(buffer, _clamp(timeout, self._deadline, httpcore.WriteTimeout))

    def close(self) -> None:
        """Close the socket."""
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        """Upgrade to TLS for ``server_hostname`` (the URL's name), bounded like `read`."""
        tls = self._inner.start_tls(
            ssl_context, server_hostname, _clamp(timeout, self._deadline, httpcore.ConnectTimeout)
        )
        return _DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> Any:  # noqa: ANN401 - httpcore's own signature
        """Socket details (``server_addr``, ``ssl_object`` ...), as the inner stream has them."""
        return self._inner.get_extra_info(info)


def _clamp(
    timeout: float | None, deadline: float, expired: type[httpcore.TimeoutException]
) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise expired("the download passed its overall deadline")
    return remaining if timeout is None else min(timeout, remaining)


def _body(request: httpx.Request) -> Iterable[bytes]:
    # httpx hands a sync transport a SyncByteStream; anything else is a caller's mistake.
    if not isinstance(request.stream, httpx.SyncByteStream):
        raise TypeError("PinnedTransport is synchronous: use it with httpx.Client")
    return request.stream


@contextlib.contextmanager
def _mapped_exceptions() -> Iterator[None]:
    """Re-raise httpcore errors as the matching httpx errors (most specific class wins)."""
    try:
        yield
    except Exception as exc:
        mapped = next((_EXCEPTIONS[c] for c in type(exc).__mro__ if c in _EXCEPTIONS), None)
        if mapped is None:
            raise
        raise mapped(str(exc)) from exc
