"""Safe format detection: oslo.utils' stream inspectors plus our own checks, then qemu-img.

The :class:`StreamInspector` sees every byte as it is staged and runs every format inspector in
parallel. Its verdict is reached from content alone: exactly one detected format (``iso`` with
``gpt`` counts as ``iso``; ``gpt`` counts as ``raw``), equal to the declared ``disk_format``,
passing the inspector's safety checks. Only then does ``qemu-img info -f`` give a second opinion,
which must agree (format, no backing file, no data file, not encrypted, not corrupt).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from oslo_utils.imageutils import format_inspector

from imageport.config import Settings
from imageport.errors import UnsafeImage
from imageport.pipeline.qemu import qemu_format

#: Formats the inspector recognises but imageport never accepts.
BANNED_FORMATS = frozenset({"qed", "luks"})
#: oslo safety-check names mapped to our stable reason codes.
_CHECK_CODES = {
    "backing_file": "backing_file",
    "data_file": "data_file",
    "unknown_features": "unknown_features",
    "descriptor": "vmdk_extent",
    "footer": "vmdk_structure",
    "mbr": "mbr_invalid",
}
_QCOW2_CRYPT_OFFSET = 32  # qcow2 header: u32 crypt_method at byte 32


@dataclass(frozen=True)
class Verdict:
    """What inspection concluded about a byte stream."""

    accepted: bool
    detected_format: str | None
    virtual_size: int | None
    reason_code: str | None = None
    message: str = ""

    def raise_if_rejected(self) -> None:
        """Raise UnsafeImage with the reason code if the image was refused."""
        if not self.accepted:
            raise UnsafeImage(self.message, code=self.reason_code)

    def as_output(self) -> dict[str, Any]:
        """The verdict as stage output (JSON)."""
        return {
            "accepted": self.accepted,
            "detected_format": self.detected_format,
            "virtual_size": self.virtual_size,
            "reason_code": self.reason_code,
            "message": self.message,
        }


class StreamInspector:
    """Feeds chunks to every oslo format inspector and decides once the stream ends."""

    def __init__(self) -> None:
        self._inspectors = {name: cls() for name, cls in format_inspector.ALL_FORMATS.items()}
        self._errors: dict[str, str] = {}
        self._head = bytearray()
        self.total = 0

    def feed(self, chunk: memoryview | bytes) -> None:
        """Show the next chunk to every inspector still in the running."""
        self.total += len(chunk)
        if len(self._head) < 512:
            self._head += chunk[: 512 - len(self._head)]
        for name, inspector in list(self._inspectors.items()):
            try:
                # oslo annotates bytes, but only slices and concatenates: any buffer works.
                inspector.eat_chunk(chunk)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - any inspector failure only excludes it
                self._errors[name] = str(exc)
                del self._inspectors[name]

    def verdict(self, declared: str | None, settings: Settings) -> Verdict:  # noqa: PLR0911
        """Finish the stream and decide: one safe format, equal to ``declared`` when given."""
        if self.total == 0:
            return _reject(None, "empty_image", "the image is empty: upload the disk image file")
        for inspector in self._inspectors.values():
            inspector.finish()
        detected, reject = self._detect()
        if reject is not None:
            return reject
        assert detected is not None  # noqa: S101 - _detect returns one or the other
        name = _public_name(detected.NAME)
        if name in BANNED_FORMATS:
            return _reject(name, "banned_format", f"{name} images are not accepted")
        if declared is not None and name != declared:
            return _reject(
                name,
                "format_mismatch",
                f"the image content is {name} but disk_format is {declared}: "
                f"declare disk_format={name} if that is what you meant",
            )
        if name not in settings.allowed_disk_formats:
            return _reject(name, "banned_format", f"disk format {name} is not allowed here")
        unsafe = self._safety(detected, name)
        if unsafe is not None:
            return unsafe
        virtual_size = int(detected.virtual_size) if name != "raw" else self.total
        if virtual_size > settings.max_virtual_size:
            return _reject(
                name,
                "virtual_size_limit",
                f"virtual size {virtual_size} exceeds the limit of {settings.max_virtual_size}",
            )
        return Verdict(accepted=True, detected_format=name, virtual_size=virtual_size)

    def _detect(self) -> tuple[Any, Verdict | None]:
        matches = [
            i for n, i in self._inspectors.items() if n != "raw" and i.complete and i.format_match
        ]
        names = {m.NAME for m in matches}
        if names == {"iso", "gpt"}:  # a hybrid ISO carries a GPT: it is an ISO
            matches = [m for m in matches if m.NAME == "iso"]
        if len(matches) > 1:
            found = "+".join(sorted(names))
            return None, _reject(found, "multiple_formats", f"the image matches {found} at once")
        if not matches:
            return self._inspectors["raw"], None
        return matches[0], None

    def _safety(self, inspector: format_inspector.FileInspector, name: str) -> Verdict | None:
        if name == "qcow2" and len(self._head) >= _QCOW2_CRYPT_OFFSET + 4:
            (crypt,) = struct.unpack_from(">I", self._head, _QCOW2_CRYPT_OFFSET)
            if crypt != 0:
                return _reject(name, "encrypted", "encrypted qcow2 images cannot be inspected")
        try:
            inspector.safety_check()
        except format_inspector.SafetyCheckFailed as exc:
            failed = sorted(exc.failures)
            code = _CHECK_CODES.get(failed[0].removeprefix("inner_"), "unsafe_image")
            detail = "; ".join(f"{k}: {v}" for k, v in exc.failures.items())
            return _reject(name, code, f"the {name} image failed safety checks ({detail})")
        except format_inspector.ImageFormatError as exc:
            return _reject(name, "truncated", f"the {name} image is incomplete: {exc}")
        return None


def cross_check(info: dict[str, Any], verdict: Verdict, settings: Settings) -> None:
    """Compare ``qemu-img info -f`` JSON with the inspector's verdict.

    Raises:
        UnsafeImage: on any disagreement or unsafe feature qemu-img reports.
    """
    name = verdict.detected_format or ""
    if info.get("format") != qemu_format(name):
        raise UnsafeImage(
            f"qemu-img reads the image as {info.get('format')}, the inspector as {name}",
            code="qemu_probe_mismatch",
        )
    if "backing-filename" in info or "full-backing-filename" in info:
        raise UnsafeImage("the image names a backing file", code="backing_file")
    data = info.get("format-specific", {}).get("data", {})
    if "data-file" in data:
        raise UnsafeImage("the image uses an external data file", code="data_file")
    if info.get("encrypted") or "encrypt" in data:
        raise UnsafeImage("the image is encrypted", code="encrypted")
    if data.get("corrupt"):
        raise UnsafeImage("qemu-img reports the image as corrupt", code="corrupt")
    virtual_size = int(info.get("virtual-size", 0))
    if not 0 < virtual_size <= settings.max_virtual_size:
        raise UnsafeImage(
            f"virtual size {virtual_size} is outside 1..{settings.max_virtual_size}",
            code="virtual_size_limit",
        )


def _public_name(oslo_name: str) -> str:
    # GPT disks are raw disks to Glance and qemu-img.
    return "raw" if oslo_name == "gpt" else oslo_name


def _reject(detected: str | None, code: str, message: str) -> Verdict:
    return Verdict(
        accepted=False,
        detected_format=detected,
        virtual_size=None,
        reason_code=code,
        message=message,
    )
