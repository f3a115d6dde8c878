"""qemu-img's second opinion on an image the stream inspector accepted.

qemu-img only ever sees a file the inspector already accepted, always with ``-f``. Its JSON must
agree with the inspector (format, no backing file, no data file, not encrypted, not corrupt, an
allowed VMDK create type whose only extent is the file itself, a virtual size within limits),
and its own probe (no ``-f``) must name the same format, which catches formats the inspector
does not know (parallels, dmg, bochs, cloop...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imageport.config import Settings
from imageport.errors import UnsafeImage
from imageport.pipeline.safety import vhdx
from imageport.pipeline.safety.headers import virtual_size_problem
from imageport.pipeline.safety.inspector import Verdict
from imageport.pipeline.safety.qemu import QemuImg, qemu_format


class ProbeMismatch(UnsafeImage):
    """qemu-img's own probe names another format than the inspector; ``probed`` is its name."""

    def __init__(self, message: str, *, probed: str | None) -> None:
        super().__init__(message, code="qemu_probe_mismatch")
        self.probed = probed


def second_opinion(qemu: QemuImg, path: Path, verdict: Verdict, settings: Settings) -> int:
    """Check an accepted image with ``qemu-img info``, forced and probed; return the virtual size.

    qemu's own probe (no ``-f``) must name the inspector's format; the JSON of ``info -f``
    must agree with the inspector. When the probe names that format, its JSON *is* the forced
    one and qemu-img runs once; otherwise ``info -f`` runs as well.

    Raises:
        UnsafeImage: qemu-img disagrees with the inspector or reports an unsafe feature.
        ConversionFailed: qemu-img cannot open the image (``qemu_refused``).
    """
    verdict.raise_if_rejected()  # never hand qemu-img a file the inspector refused
    fmt = verdict.detected_format or "raw"
    if fmt == "vhdx":  # qemu would refuse a checkpoint without saying why
        problem = vhdx.parent_problem(path)
        if problem is not None:
            raise UnsafeImage(problem[1], code=problem[0])
    probe = qemu.info(path, None)
    # qemu probes headers only: a fixed VHD (footer at EOF) is raw to it, as oslo would say.
    expected = "raw" if verdict.subformat == "fixed" else qemu_format(fmt)
    # When qemu opened the image with the very driver ``-f`` names, its JSON is what
    # ``info -f`` would print: one qemu-img run gives both opinions.
    info = probe if probe.get("format") == qemu_format(fmt) else qemu.info(path, fmt)
    cross_check(info, path, verdict, settings)  # its specific refusals come first
    if probe.get("format") != expected:
        raise ProbeMismatch(
            f"qemu-img recognises the image as {probe.get('format')}, the inspector as {fmt}: "
            "images in formats imageport cannot inspect are refused "
            "(rule qemu_probe, field: format)",
            probed=probe.get("format"),
        )
    return int(info["virtual-size"])


def cross_check(info: dict[str, Any], path: Path, verdict: Verdict, settings: Settings) -> None:
    """Compare ``qemu-img info -f`` JSON with the inspector's verdict.

    Raises:
        UnsafeImage: on any disagreement or unsafe feature qemu-img reports.
    """
    name = verdict.detected_format or "raw"
    if info.get("format") != qemu_format(name):
        raise UnsafeImage(
            f"qemu-img reads the image as {info.get('format')}, the inspector as {name} "
            "(rule qemu_info, field: format)",
            code="qemu_probe_mismatch",
        )
    data = info.get("format-specific", {}).get("data", {})
    for code, message in _unsafe_features(info, data):
        raise UnsafeImage(f"qemu-img reports that {message} (rule qemu_info)", code=code)
    if name == "vmdk":
        _check_vmdk(data, path, settings)
    problem = virtual_size_problem(int(info.get("virtual-size", 0)), settings.max_virtual_size)
    if problem is not None:
        raise UnsafeImage(f"qemu-img reports that {problem[1]}", code=problem[0])


def _unsafe_features(info: dict[str, Any], data: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    if "backing-filename" in info or "full-backing-filename" in info:
        named = str(info.get("backing-filename") or info.get("full-backing-filename"))[:200]
        found.append(
            ("backing_file", f"the image names a backing file {named!r} (field: backing-filename)")
        )
    if "data-file" in data or data.get("data-file-raw"):
        found.append(("data_file", "the image uses an external data file (field: data-file)"))
    if info.get("encrypted") or "encrypt" in data:
        found.append(("encrypted", "the image is encrypted (field: encrypted)"))
    if data.get("corrupt"):
        found.append(("corrupt", "the image is corrupt (field: corrupt)"))
    return found


def _check_vmdk(data: dict[str, Any], path: Path, settings: Settings) -> None:
    create_type = data.get("create-type")
    if create_type not in settings.allowed_vmdk_create_types:
        raise UnsafeImage(
            f"qemu-img reports VMDK create type {create_type}, which is not allowed "
            "(rule qemu_vmdk, field: create-type)",
            code="vmdk_subformat",
        )
    mine = path.resolve()
    for extent in data.get("extents", []):
        # qemu-img reports the extent files it opened, not the descriptor's names: for the one
        # SPARSE extent of a monolithicSparse or streamOptimized file that is the file itself,
        # whatever name the descriptor gives (a renamed upload passes). Nothing else may appear.
        if Path(str(extent.get("filename", ""))).resolve() != mine:
            raise UnsafeImage(
                f"qemu-img reports a VMDK extent {extent.get('filename')} besides the image "
                "(rule qemu_vmdk, field: extents)",
                code="vmdk_extent",
            )
