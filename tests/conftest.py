"""Shared fixtures: a clean environment, and real SQLite and PostgreSQL databases.

PostgreSQL is found in this order: ``IMAGEPORT_TEST_DATABASE_URL``; a server on 127.0.0.1:5432
with trust auth and a ``test`` database; a throwaway server started with initdb/pg_ctl from
``/usr/lib/postgresql/*/bin``. Without any of them, PostgreSQL tests skip locally and fail when
``CI`` is set. Each test session works in its own fresh database (``imageport_t_<random>``),
dropped at the end, so parallel runs do not collide.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import make_url

from imageport.records import Database

TEST_DATABASE_URL_ENV = "IMAGEPORT_TEST_DATABASE_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch):
    """Hide the developer's IMAGEPORT_* settings from every test (IMAGEPORT_TEST_* stay)."""
    for name in list(os.environ):
        if name.startswith("IMAGEPORT_") and not name.startswith("IMAGEPORT_TEST_"):
            monkeypatch.delenv(name)


# PostgreSQL server discovery


def _conninfo(url: str) -> str:
    """A SQLAlchemy URL as a libpq URI that psycopg accepts."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(_conninfo(url), connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def throwaway_postgres():
    """Start a private PostgreSQL server in a temporary directory; yield its URL or None."""
    initdbs = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not initdbs:
        yield None
        return
    bindir = initdbs[-1].parent
    root = Path(tempfile.mkdtemp(prefix="imageport-pg-"))
    # initdb refuses to run as root: run the server as the postgres user, in a dir it owns.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", _free_port()
    pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run(
            [*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*pg_ctl, "-l", str(root / "log"), "-o", options, "-w", "start"],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(root, ignore_errors=True)
        yield None
        return
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"a required service is missing in CI: {reason}")
    pytest.skip(f"service unavailable: {reason}")


@pytest.fixture(scope="session")
def postgres_server_url():
    """URL of a PostgreSQL server and a database on it we may connect to (not ours to drop)."""
    configured = os.environ.get(TEST_DATABASE_URL_ENV)
    if configured:
        if not _reachable(configured):
            _unavailable(f"{TEST_DATABASE_URL_ENV}={configured} is not reachable")
        yield configured
        return
    if _reachable(DEFAULT_POSTGRES_URL):
        yield DEFAULT_POSTGRES_URL
        return
    with throwaway_postgres() as url:
        if url is None:
            _unavailable("no server on 127.0.0.1:5432 and initdb/pg_ctl could not start one")
        yield url


@pytest.fixture(scope="session")
def postgres_url(postgres_server_url):
    """URL of a fresh database created for this test session and dropped after it."""
    name = f"imageport_t_{secrets.token_hex(6)}"
    with psycopg.connect(_conninfo(postgres_server_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(postgres_server_url, name)
    finally:
        with psycopg.connect(_conninfo(postgres_server_url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Databases for tests


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """An empty database of each kind: a new SQLite file, or the session's PG database reset."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/db/imageport.db"
    url = request.getfixturevalue("postgres_url")
    with psycopg.connect(_conninfo(url), autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return url


@pytest.fixture
def empty_database(database_url):
    """A ``Database`` on an empty schema (not migrated)."""
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture
def database(empty_database):
    """A ``Database`` migrated to the newest revision, with no rows."""
    empty_database.upgrade()
    return empty_database


# Redis for the distributed mode


@contextlib.contextmanager
def _throwaway_redis():
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="imageport-redis-") as workdir:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            for _ in range(100):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                proc.poll()
                if proc.returncode is not None:
                    break
                import time  # noqa: PLC0415

                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def _redis_answers(url: str) -> bool:
    import redis  # noqa: PLC0415

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_server_url():
    """A Redis URL: IMAGEPORT_TEST_REDIS_URL, else a throwaway redis-server on a free port."""
    url = os.environ.get("IMAGEPORT_TEST_REDIS_URL")
    if url:
        if not _redis_answers(url):
            _unavailable(f"IMAGEPORT_TEST_REDIS_URL={url} does not answer")
        yield url
        return
    with _throwaway_redis() as started:
        if started is None or not _redis_answers(started):
            _unavailable("no Redis: install redis-server or set IMAGEPORT_TEST_REDIS_URL")
        yield started


@pytest.fixture
def redis_url(redis_server_url):
    """The session's Redis with an empty database."""
    import redis  # noqa: PLC0415

    redis.Redis.from_url(redis_server_url).flushdb()
    return redis_server_url


@pytest.fixture
def postgres_empty_url(postgres_url):
    """The session's PostgreSQL database with an empty schema."""
    with psycopg.connect(_conninfo(postgres_url), autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return postgres_url


# RabbitMQ, the other broker


@pytest.fixture(scope="session")
def rabbitmq_server_url():
    """An AMQP URL: IMAGEPORT_TEST_RABBITMQ_URL, else a throwaway rabbitmq-server node.

    Without rabbitmq-server the RabbitMQ variants skip locally, saying so, and fail in CI.
    """
    from brokers_support import RabbitServer, amqp_answers  # noqa: PLC0415

    url = os.environ.get("IMAGEPORT_TEST_RABBITMQ_URL")
    if url:
        if not amqp_answers(url):
            _unavailable(f"IMAGEPORT_TEST_RABBITMQ_URL={url} does not answer")
        yield url
        return
    server = RabbitServer()
    if server.binary is None:
        _unavailable(
            "no RabbitMQ: install rabbitmq-server (apt-get install rabbitmq-server) "
            "or set IMAGEPORT_TEST_RABBITMQ_URL"
        )
    try:
        server.start()
    except RuntimeError as exc:
        server.close()
        _unavailable(f"a throwaway rabbitmq-server did not start: {exc}")
    yield server.url
    server.close()


@pytest.fixture
def rabbitmq_url(rabbitmq_server_url):
    """The session's RabbitMQ with none of imageport's queues (deleted before the test)."""
    from brokers_support import purge_queues  # noqa: PLC0415

    purge_queues(rabbitmq_server_url)
    return rabbitmq_server_url


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request):
    """A clean broker of each kind: the session's Redis (flushed) or RabbitMQ (purged)."""
    return request.getfixturevalue(f"{request.param}_url")
