"""Fixtures for pipeline tests: settings in a temp data dir, services on a real database."""

from __future__ import annotations

import secrets

import pytest
from moto.server import ThreadedMotoServer
from s3_support import s3_client
from services_support import free_port

from imageport.config import Settings
from imageport.pipeline.context import Services


@pytest.fixture
def settings(tmp_path, database_url) -> Settings:
    """Embedded-mode settings in a private data dir, on SQLite or PostgreSQL."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        progress_interval_seconds=0.01,
        max_attempts=1,
        # web-download tests serve from 127.0.0.1 on a random port: allow exactly that,
        # explicitly (the defaults refuse loopback and every port but 80/443).
        web_download_allowed_networks=("127.0.0.0/8",),
        web_download_ports=(80, 443, *range(1024, 65536)),
    )


@pytest.fixture
def services(settings):
    """Real services (database migrated, file store, qemu-img, httpx)."""
    opened = Services.from_settings(settings)
    opened.db.upgrade()
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto S3 server in this process, over real HTTP on 127.0.0.1."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(moto_endpoint):
    """A new empty bucket on the moto server."""
    name = f"images-{secrets.token_hex(4)}"
    s3_client(moto_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def keystone():
    """A real Keystone (uWSGI, SQLite, fernet), started once per run; see keystone_support.

    Skips when ``.venv-keystone`` is missing, except in CI (``CI`` set), where it fails:
    scripts/bootstrap.sh --test installs it there.
    """
    # Imported here: keystoneauth1 is loaded only by the runs that use Keystone, and this
    # file's imports stay as they were.
    import os  # noqa: PLC0415

    from keystone_support import KeystoneUnavailable, start_keystone  # noqa: PLC0415

    try:
        started = start_keystone()
    except KeystoneUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Keystone is required in CI: {exc}")
        pytest.skip(f"Keystone unavailable: {exc}")
    yield started
    started.stop()
