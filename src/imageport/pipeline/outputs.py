"""The typed outputs of the stages: what each stage hands to the later ones, and to a resume.

Each output is recorded on its stage run as JSON (the only place they become dicts) and read
back with ``model_validate`` when a job resumes, so a stage reads an earlier stage's output as
a checked type (``ctx.output(StagedOutput)``) rather than by string keys.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from imageport.pipeline.data.scan import ScanResult
from imageport.stores import StoredObject


class StageOutput(BaseModel):
    """The base of every stage output; ``STAGE`` names the stage that records it."""

    # Rows recorded by an older release may carry keys this one no longer knows: ignore them.
    model_config = ConfigDict(frozen=True, extra="ignore")

    STAGE: ClassVar[str]

    def as_json(self) -> dict[str, Any]:
        """The output as it is recorded on the stage run (a JSON object)."""
        return self.model_dump(mode="json")

    def was_skipped(self) -> bool:
        """Whether the stage had nothing to do (its run is recorded ``skipped``)."""
        return False


class StagedOutput(StageOutput, ScanResult):
    """``stage``: the staged file, and what the one-pass scan found on the way."""

    STAGE: ClassVar[str] = "stage"

    path: str
    #: ``bare`` once a compressed upload was unpacked; else what the request declared.
    container_format: str
    #: Bytes an interrupted web-download had already staged (a ``Range`` resume).
    resumed_from: int = 0
    #: The staged file's copy in remote staging (None with local staging).
    staged_url: str | None = None

    @property
    def disk_bytes(self) -> int:
        """Size of the staged file: the disk, decompressed when the upload was compressed."""
        return self.disk_size if self.disk_size is not None else (self.size or 0)


class VerifiedOutput(StageOutput):
    """``verify``: the digests that were declared and matched."""

    STAGE: ClassVar[str] = "verify"

    verified: list[str]


class InspectedOutput(StageOutput):
    """``inspect``: the format both the inspector and qemu-img agree on, and its disk size."""

    STAGE: ClassVar[str] = "inspect"

    detected_format: str | None
    virtual_size: int


class ConvertedOutput(StageOutput):
    """``convert``: the converted file, or ``skipped`` when the format was already right."""

    STAGE: ClassVar[str] = "convert"

    converted: bool
    format: str
    skipped: bool = False
    staged_url: str | None = None
    path: str | None = None
    size: int | None = None
    virtual_size: int | None = None
    #: Written from ``qemu-img map`` in one pass (else by ``qemu-img convert``).
    mapped: bool = False
    #: Written while the image was staged, by the early conversion (its layout checked
    #: against ``qemu-img map`` of the inspected file; see pipeline/data/early.py).
    early: bool = False
    #: The output's digests when they were computed while it was written.
    md5: str | None = None
    hash_algo: str | None = None
    hash_value: str | None = None

    def was_skipped(self) -> bool:
        """A conversion to the format the image already has is skipped."""
        return self.skipped


class StoredLocation(BaseModel):
    """One copy of the image written to a store."""

    model_config = ConfigDict(frozen=True)

    store_id: str
    url: str
    #: The location's metadata as Glance shows it (JSON: free-form by the API's contract).
    metadata: dict[str, Any]

    @classmethod
    def of(cls, stored: StoredObject) -> StoredLocation:
        """The output's view of an object a store wrote."""
        metadata = {"store": stored.store_id, **stored.metadata}
        return cls(store_id=stored.store_id, url=stored.url, metadata=metadata)


class StoredCopies(StageOutput):
    """``copy`` (an import's or copy-image's): the copies written and the stores that failed."""

    STAGE: ClassVar[str] = "copy"

    locations: list[StoredLocation]
    failed_stores: list[str]


class CopiedOutput(StoredCopies):
    """``copy`` of an import: the locations, and the hashes of the final bytes."""

    md5: str
    hash_algo: str
    hash_value: str
    size: int


class ReplicatedOutput(StoredCopies):
    """``copy`` of copy-image: the new locations and the location they were read from."""

    source: str


class ActivatedOutput(StageOutput):
    """``activate``: the task's result, as Glance shows it."""

    STAGE: ClassVar[str] = "activate"

    image_id: str
    stores: list[str]
    failed_stores: list[str]
