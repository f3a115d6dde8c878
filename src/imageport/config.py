"""Typed settings, built once from ``IMAGEPORT_*`` variables and an optional TOML file.

``load_settings()`` is the only place that reads the environment. Everything else receives the
frozen :class:`Settings` object as an argument. Precedence, highest first: explicit keyword
arguments, ``IMAGEPORT_*`` environment variables, the TOML file named by ``IMAGEPORT_CONFIG``,
the defaults below (which give the embedded mode).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from imageport.errors import ConfigurationError

#: Environment variable naming the optional TOML configuration file.
CONFIG_ENV = "IMAGEPORT_CONFIG"

DEFAULT_DATA_DIR = Path("imageport-data")  # relative to the working directory
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024  # bytes per read on the data path
DEFAULT_MAX_IMAGE_BYTES = 64 * 1024**3  # bytes received from a source, 64 GiB
DEFAULT_MAX_DECOMPRESSED_BYTES = 64 * 1024**3  # bytes out of one decompression layer
DEFAULT_MAX_VIRTUAL_SIZE = 1024**4  # bytes of virtual disk, 1 TiB
DEFAULT_QEMU_TIMEOUT = 3600.0  # seconds for one qemu-img convert
DEFAULT_QEMU_INFO_TIMEOUT = 30.0  # seconds for one qemu-img info
DEFAULT_QEMU_ADDRESS_SPACE = 1024**3  # bytes of address space for qemu-img info
DEFAULT_QEMU_CPU_SECONDS = 30  # CPU seconds for qemu-img info
DEFAULT_HTTP_CONNECT_TIMEOUT = 10.0  # seconds
DEFAULT_HTTP_READ_TIMEOUT = 60.0  # seconds between two received chunks
DEFAULT_HTTP_DEADLINE = 6 * 3600.0  # seconds for a whole download
DEFAULT_TASK_TTL_HOURS = 48  # hours a finished task is kept (Glance's task_time_to_live)
DEFAULT_MAX_ATTEMPTS = 3  # deliveries of one import before a transient error fails it
DEFAULT_PROGRESS_INTERVAL = 1.0  # seconds between two persisted progress updates
DEFAULT_LEASE_TTL = 60.0  # seconds a job's lease lasts without a heartbeat
DEFAULT_STALL_TIMEOUT = 600.0  # seconds without progress before a job is declared stalled
DEFAULT_REAPER_INTERVAL = 15.0  # seconds between two reaper passes in a worker
DEFAULT_SHUTDOWN_GRACE = 30.0  # seconds a worker may finish its stage after SIGTERM
DEFAULT_HTTP_MAX_REDIRECTS = 5  # redirect hops web-download follows, each re-checked
DEFAULT_S3_PART_SIZE = 64 * 1024 * 1024  # bytes per S3 multipart part
DEFAULT_S3_CONCURRENCY = 4  # S3 parts uploaded in parallel
DEFAULT_API_HOST = "127.0.0.1"  # address `imageport api` listens on
DEFAULT_API_PORT = 9292  # TCP port of `imageport api` (Glance's)
DEFAULT_MAX_IMAGE_TAGS = 128  # tags per image (Glance's image_tag_quota)
DEFAULT_MAX_IMAGE_PROPERTIES = 128  # extra properties per image (Glance's image_property_quota)
DEFAULT_MAX_IMAGE_MEMBERS = 128  # members per image (Glance's image_member_quota)
DEFAULT_MAX_IMAGE_LOCATIONS = 10  # locations per image (Glance's image_location_quota)
DEFAULT_KEYSTONE_CACHE_SECONDS = 300.0  # seconds a validated token is trusted without asking
DEFAULT_CLIENT_SOCKET_TIMEOUT = 900.0  # seconds one read of a request body may wait (Glance's)
DEFAULT_STAGING_TTL_HOURS = 24  # hours a staged upload that is never imported is kept
DEFAULT_SPACE_MARGIN_RATIO = 0.05  # share of a step's size kept free beyond it (space admission)
DEFAULT_SPACE_MARGIN_BYTES = 64 * 1024 * 1024  # bytes kept free beyond a step's size
DEFAULT_SPACE_WAIT_SECONDS = 900.0  # seconds a job waits for space before failing no_space
DEFAULT_SPACE_RETRY_SECONDS = 10.0  # seconds before a job handed back for space is offered again

#: How ``imageport api`` learns who is calling (see :mod:`imageport.access`).
AuthStrategy = Literal["keystone", "trusted-proxy", "noauth"]

DiskFormat = Literal[
    "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop"
]
DISK_FORMATS: tuple[str, ...] = DiskFormat.__args__  # type: ignore[attr-defined]
CONTAINER_FORMATS: tuple[str, ...] = (
    "ami",
    "ari",
    "aki",
    "bare",
    "ovf",
    "ova",
    "docker",
    "compressed",
)


class StoreSettings(BaseModel):
    """One target store, configured by id under ``[stores.ID]`` in the TOML file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["file", "s3"] = "file"
    #: Directory of a file store.
    path: Path | None = None
    #: Bucket, endpoint, region, credentials and key prefix of an S3 store.
    bucket: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    prefix: str = ""
    read_only: bool = False
    #: What ``GET /v2/info/stores`` says of the store (Glance's ``store_description``);
    #: unset, the store is listed without a description, as in Glance.
    description: str | None = None

    @model_validator(mode="after")
    def _check_kind(self) -> StoreSettings:
        if self.kind == "file" and self.path is None:
            raise ValueError("a file store needs a path")
        if self.kind == "s3" and not self.bucket:
            raise ValueError("an s3 store needs a bucket")
        return self


class Settings(BaseSettings):
    """Everything imageport can be configured with; see the README for each setting."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGEPORT_",
        frozen=True,
        extra="forbid",
        env_nested_delimiter="__",
    )

    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str = ""
    broker_url: str = "memory://"
    staging_dir: Path | None = None
    #: Where staged data lives so that any worker can resume a job: ``file:///path`` (a local
    #: or shared directory; takes the place of staging_dir) or ``s3://bucket/prefix`` (every
    #: durable stage output is also kept in the bucket; staging_dir is then a local cache).
    staging_url: str | None = None
    #: Endpoint, region and credentials for an s3:// staging_url; unset, they are taken from
    #: a configured S3 store of the same bucket, else boto3's usual chain.
    staging_endpoint_url: str | None = None
    staging_region: str | None = None
    staging_access_key: str | None = None
    staging_secret_key: str | None = None
    scratch_dir: Path | None = None
    default_store: str = "local"
    stores: dict[str, StoreSettings] = Field(default_factory=dict)
    target_format: DiskFormat | None = None
    hash_algo: Literal["sha256", "sha384", "sha512"] = "sha512"
    # Convert a qcow2 bound for raw while it is staged (pipeline/data/early.py).
    early_conversion: bool = True
    owner: str | None = None
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=64 * 1024)
    max_image_bytes: int = Field(default=DEFAULT_MAX_IMAGE_BYTES, gt=0)
    max_decompressed_bytes: int = Field(default=DEFAULT_MAX_DECOMPRESSED_BYTES, gt=0)
    max_virtual_size: int = Field(default=DEFAULT_MAX_VIRTUAL_SIZE, gt=0)
    allowed_disk_formats: tuple[str, ...] = ("raw", "qcow2", "vmdk", "vhd", "vhdx", "vdi", "iso")
    allowed_vmdk_create_types: tuple[str, ...] = ("monolithicSparse", "streamOptimized")
    web_download_schemes: tuple[str, ...] = ("http", "https")
    web_download_ports: tuple[int, ...] = (80, 443)
    #: CIDRs web-download may reach although they are not global unicast (e.g. 127.0.0.0/8 for
    #: tests and development). Empty by default: only public addresses are allowed.
    web_download_allowed_networks: tuple[str, ...] = ()
    http_max_redirects: int = Field(default=DEFAULT_HTTP_MAX_REDIRECTS, ge=0, le=10)
    qemu_img_path: str = "qemu-img"
    qemu_timeout_seconds: float = Field(default=DEFAULT_QEMU_TIMEOUT, gt=0)
    qemu_info_timeout_seconds: float = Field(default=DEFAULT_QEMU_INFO_TIMEOUT, gt=0)
    qemu_address_space_bytes: int = Field(default=DEFAULT_QEMU_ADDRESS_SPACE, gt=0)
    qemu_cpu_seconds: int = Field(default=DEFAULT_QEMU_CPU_SECONDS, gt=0)
    http_connect_timeout: float = Field(default=DEFAULT_HTTP_CONNECT_TIMEOUT, gt=0)
    http_read_timeout: float = Field(default=DEFAULT_HTTP_READ_TIMEOUT, gt=0)
    http_deadline_seconds: float = Field(default=DEFAULT_HTTP_DEADLINE, gt=0)
    task_ttl_hours: int = Field(default=DEFAULT_TASK_TTL_HOURS, gt=0)
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1)
    lease_ttl_seconds: float = Field(default=DEFAULT_LEASE_TTL, gt=0)
    stall_timeout_seconds: float = Field(default=DEFAULT_STALL_TIMEOUT, gt=0)
    reaper_interval_seconds: float = Field(default=DEFAULT_REAPER_INTERVAL, gt=0)
    shutdown_grace_seconds: float = Field(default=DEFAULT_SHUTDOWN_GRACE, ge=0)
    s3_part_size: int = Field(default=DEFAULT_S3_PART_SIZE, ge=5 * 1024 * 1024)
    s3_max_concurrency: int = Field(default=DEFAULT_S3_CONCURRENCY, ge=1)
    progress_interval_seconds: float = Field(default=DEFAULT_PROGRESS_INTERVAL, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "warning"
    log_json: bool = False
    # Settings of `imageport api` (issue 6), kept last so earlier fields keep their order.
    #: Address and TCP port `imageport api` listens on (Glance's port by default).
    api_host: str = DEFAULT_API_HOST
    api_port: int = Field(default=DEFAULT_API_PORT, ge=1, le=65535)
    #: When set, every API request must carry it in ``X-Auth-Token``; None accepts any request.
    api_token: str | None = None
    #: glance-download: Image API endpoint per region ("RegionOne") or per region and
    #: interface ("RegionOne/internal"), e.g. {"RegionOne": "https://glance.example:9292"}.
    glance_download_endpoints: dict[str, str] = Field(default_factory=dict)
    #: Token sent as ``X-Auth-Token`` to the glance-download endpoints, if they need one.
    glance_download_token: str | None = None
    #: Most tags one image may carry (Glance's image_tag_quota).
    max_image_tags: int = Field(default=DEFAULT_MAX_IMAGE_TAGS, ge=0)
    # Identity, policy and quotas (issue 13).
    #: ``keystone`` (tokens validated by Keystone), ``trusted-proxy`` (identity headers from
    #: an authenticating proxy, with ``X-Identity-Status: Confirmed``) or ``noauth`` (every
    #: caller is an administrator; only on a loopback address).
    auth_strategy: AuthStrategy = "noauth"
    #: Keystone v3 URL and the service user that validates tokens (and reads limits).
    keystone_auth_url: str | None = None
    keystone_username: str | None = None
    keystone_password: str | None = None
    keystone_project_name: str | None = None
    keystone_user_domain_name: str = "Default"
    keystone_project_domain_name: str = "Default"
    #: Seconds a validated token is trusted before Keystone is asked again.
    keystone_cache_seconds: float = Field(default=DEFAULT_KEYSTONE_CACHE_SECONDS, ge=0)
    #: imageport's ``image`` endpoint id in Keystone: whose registered limits apply.
    keystone_endpoint_id: str | None = None
    #: Region of that endpoint (for oslo.limit's endpoint lookup).
    keystone_region_name: str | None = None
    #: An oslo.policy file (YAML or JSON) whose rules override Glance's defaults.
    policy_file: Path | None = None
    #: Take Glance's unified limits from Keystone (registered and project limits) instead of
    #: the ``image_*_total`` / ``image_count_uploading`` settings below.
    use_keystone_limits: bool = False
    #: Glance's unified limits when not taken from Keystone; None is unlimited.
    image_size_total: int | None = Field(default=None, ge=0)  # MiB of active image data
    image_stage_total: int | None = Field(default=None, ge=0)  # MiB of staged uploads
    image_count_total: int | None = Field(default=None, ge=0)  # images a project owns
    image_count_uploading: int | None = Field(default=None, ge=0)  # uploads and imports at once
    #: Glance's per-image quotas.
    max_image_properties: int = Field(default=DEFAULT_MAX_IMAGE_PROPERTIES, ge=0)
    max_image_members: int = Field(default=DEFAULT_MAX_IMAGE_MEMBERS, ge=0)
    max_image_locations: int = Field(default=DEFAULT_MAX_IMAGE_LOCATIONS, ge=0)
    #: Hours a staged upload that is never imported is kept (it counts towards
    #: ``image_stage_total`` until then).
    staging_ttl_hours: float = Field(default=DEFAULT_STAGING_TTL_HOURS, gt=0)
    #: Seconds one read of a request body may wait before the request is dropped.
    client_socket_timeout: float = Field(default=DEFAULT_CLIENT_SOCKET_TIMEOUT, gt=0)
    #: Uploads (``PUT /stage``, ``PUT /file``) at once, in all and per project; None is
    #: unlimited. Past the cap an upload is refused (503 in all, 413 per project).
    max_concurrent_uploads: int | None = Field(default=None, ge=1)
    max_concurrent_uploads_per_project: int | None = Field(default=None, ge=1)
    # Glance parity (issue 14).
    #: Show ``locations`` in image bodies (Glance's ``show_multiple_locations``): the stored
    #: locations to administrators, an empty list to anyone else. Off by default, as in Glance.
    show_multiple_locations: bool = False
    #: Show ``direct_url`` (the first location's URL) in image bodies (Glance's
    #: ``show_image_direct_url``). Off by default, as in Glance: it exposes store paths.
    show_image_direct_url: bool = False
    # The fleet at scale (issue 16).
    #: Give each project with queued imports a turn (round robin over imports in flight);
    #: off, workers run imports in the broker's order.
    fair_share: bool = True
    #: Imports one project may have in flight at once across all workers; None is unlimited.
    #: (``image_count_uploading`` already refuses imports at the API past the quota.)
    max_inflight_per_project: int | None = Field(default=None, ge=1)
    #: Space admission: a worker starts staging or converting only when the file system can
    #: hold what the step writes, plus this margin (a share of the size and a fixed amount).
    space_margin_ratio: float = Field(default=DEFAULT_SPACE_MARGIN_RATIO, ge=0)
    space_margin_bytes: int = Field(default=DEFAULT_SPACE_MARGIN_BYTES, ge=0)
    #: Seconds a job that fits nowhere keeps waiting for space before it fails (no_space).
    space_wait_seconds: float = Field(default=DEFAULT_SPACE_WAIT_SECONDS, ge=0)
    #: Seconds before a job handed back for lack of space is offered to a worker again.
    space_retry_seconds: float = Field(default=DEFAULT_SPACE_RETRY_SECONDS, gt=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - no .env files, on purpose
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read keyword arguments, then the environment, then the TOML file (if any)."""
        toml_file = settings_cls.model_config.get("toml_file")
        if toml_file is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file))

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        if self.auth_strategy != "keystone":
            return self
        needed = ("keystone_auth_url", "keystone_username", "keystone_password")
        missing = [f"IMAGEPORT_{name.upper()}" for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(f"auth_strategy keystone needs {', '.join(missing)}")
        if self.api_token is not None:
            raise ValueError(
                "api_token is a shared key in X-Auth-Token, where keystone expects the user's "
                "token: unset IMAGEPORT_API_TOKEN with auth_strategy keystone"
            )
        return self

    @model_validator(mode="after")
    def _check_default_store(self) -> Settings:
        if self.stores and self.default_store not in self.stores:
            raise ValueError(f"default_store {self.default_store!r} is not in [stores]")
        return self

    @model_validator(mode="after")
    def _check_staging_url(self) -> Settings:
        if self.staging_url is None:
            return self
        parts = urlsplit(self.staging_url)
        if parts.scheme == "file" and parts.path.startswith("/") and not parts.netloc:
            return self
        if parts.scheme == "s3" and parts.netloc and not (parts.query or parts.fragment):
            return self
        raise ValueError(
            f"staging_url {self.staging_url!r} must be file:///absolute/path or s3://bucket/prefix"
        )

    # Derived locations: the embedded defaults all live under data_dir.

    @property
    def resolved_database_url(self) -> str:
        """The database URL; an SQLite file in the data directory unless set."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'imageport.db').resolve()}"

    @property
    def resolved_staging_dir(self) -> Path:
        """Where staged source bytes are kept between stages (one directory per task).

        A ``file://`` staging_url names it; with an ``s3://`` one it is the local cache.
        """
        if self.staging_url is not None and self.staging_url.startswith("file:"):
            return Path(unquote(urlsplit(self.staging_url).path)).resolve()
        return (self.staging_dir or self.data_dir / "staging").resolve()

    @property
    def remote_staging(self) -> StoreSettings | None:
        """The S3 bucket staged data is also kept in (``s3://`` staging_url), else None."""
        if self.staging_url is None or not self.staging_url.startswith("s3:"):
            return None
        parts = urlsplit(self.staging_url)
        prefix = unquote(parts.path).lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        # A target store in the same bucket knows the endpoint and credentials already.
        same = next(
            (c for c in self.stores.values() if c.kind == "s3" and c.bucket == parts.netloc),
            StoreSettings(kind="s3", bucket=parts.netloc),
        )
        return StoreSettings(
            kind="s3",
            bucket=parts.netloc,
            prefix=prefix,
            endpoint_url=self.staging_endpoint_url or same.endpoint_url,
            region=self.staging_region or same.region,
            access_key=self.staging_access_key or same.access_key,
            secret_key=self.staging_secret_key or same.secret_key,
        )

    @property
    def resolved_scratch_dir(self) -> Path:
        """Where conversion output is written before it is copied to non-file stores."""
        return (self.scratch_dir or self.data_dir / "scratch").resolve()

    @property
    def resolved_stores(self) -> dict[str, StoreSettings]:
        """The configured stores, or the embedded ``local`` file store under the data dir."""
        if self.stores:
            return dict(self.stores)
        return {"local": StoreSettings(kind="file", path=(self.data_dir / "images").resolve())}

    @property
    def is_embedded(self) -> bool:
        """True when jobs run in this process (in-memory broker)."""
        return self.broker_url.startswith("memory://")


def load_settings(**overrides: Any) -> Settings:  # noqa: ANN401 - any Settings field
    """Build the settings once: keyword overrides, then the environment, then the TOML file.

    Raises:
        ConfigurationError: if a value is invalid or the TOML file cannot be read.
    """
    config_file = os.environ.get(CONFIG_ENV)

    class _FileSettings(Settings):
        # A subclass per call carries the file name, so no global state is involved.
        model_config = SettingsConfigDict(toml_file=config_file)

    try:
        if config_file and not Path(config_file).is_file():
            raise ConfigurationError(f"{CONFIG_ENV}={config_file} does not name a readable file")
        cls = _FileSettings if config_file else Settings
        return cls(**overrides)
    except ValueError as exc:
        raise ConfigurationError(f"invalid configuration: {exc}") from exc
