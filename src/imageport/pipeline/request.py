"""What an import asks for: the task's ``input``, validated once when the task is created."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from imageport.config import CONTAINER_FORMATS, DISK_FORMATS
from imageport.errors import InvalidRequest
from imageport.pipeline.data.hashing import check_md5, parse_hash_spec

#: Import methods: a path on the worker's host, an http(s) URL, bytes already staged by the API
#: (glance-direct: ``source`` is the image id), an active image to more stores, or another
#: Image API endpoint's image (glance-download: ``source`` is the remote image's file URL).
Method = Literal["local-file", "web-download", "glance-direct", "copy-image", "glance-download"]


class ImportRequest(BaseModel):
    """The parameters of one import, stored as the task's ``input``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Method
    source: str = Field(
        description="a local path (local-file), an http(s) URL (web-download, glance-download) "
        "or an image id (glance-direct, copy-image)"
    )
    disk_format: str
    container_format: str = "bare"
    target_format: str | None = None
    stores: tuple[str, ...] = ()
    all_stores_must_succeed: bool = True
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None

    @field_validator("disk_format", "target_format")
    @classmethod
    def _known_disk_format(cls, value: str | None) -> str | None:
        if value is not None and value not in DISK_FORMATS:
            raise ValueError(f"unknown disk format {value!r}; use one of {', '.join(DISK_FORMATS)}")
        return value

    @field_validator("container_format")
    @classmethod
    def _known_container_format(cls, value: str) -> str:
        if value not in CONTAINER_FORMATS:
            raise ValueError(
                f"unknown container format {value!r}; use one of {', '.join(CONTAINER_FORMATS)}"
            )
        return value

    @field_validator("checksum")
    @classmethod
    def _md5(cls, value: str | None) -> str | None:
        return None if value is None else check_md5(value)

    @classmethod
    def with_hash(cls, hash_spec: str | None, **fields: object) -> ImportRequest:
        """Build a request, splitting ``--hash ALGO:HEX`` into its two fields."""
        if hash_spec:
            algo, value = parse_hash_spec(hash_spec)
            fields.update(os_hash_algo=algo, os_hash_value=value)
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            raise InvalidRequest(problems) from exc

    @property
    def final_format(self) -> str:
        """The disk format the stored image will have."""
        return self.target_format or self.disk_format

    @property
    def source_hash_needed(self) -> bool:
        """Whether the source's own digests serve anyone.

        They do when a declared checksum or hash is checked against them, or when the source
        is likely stored as it is (no conversion asked for): its digests are then the image's.
        Otherwise the stored bytes are new ones, hashed as they are written, and hashing the
        source too would only cost CPU. A wrong guess costs time, never correctness: a stored
        source whose digests are missing is hashed on its way to the stores.
        """
        declared = self.checksum is not None or self.os_hash_value is not None
        return declared or self.final_format == self.disk_format
