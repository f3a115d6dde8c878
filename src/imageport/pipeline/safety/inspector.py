"""Safe format detection from content: oslo.utils' stream inspectors plus our own checks.

The :class:`StreamInspector` sees every byte as it is staged (decompressed bytes when the upload
was compressed) and runs every oslo format inspector in parallel. Its verdict comes from content
alone: exactly one detected format (``iso`` with ``gpt`` counts as ``iso``; ``gpt`` counts as
``raw``; a VHD footer at EOF makes raw data a fixed VHD), equal to the declared ``disk_format``,
allowed by settings, passing oslo's safety checks and ours (:mod:`.headers`, :mod:`.vhd`,
:mod:`.vmdk`). Every refusal message ends with the rule that refused and the field at fault,
e.g. ``(rule vmdk_footer)``, so an operator can tell a hostile file from a tool's quirk.

Rejection is as early as the bytes allow: once every inspector has its header regions (the
*decision point*, usually inside the first chunk), a refusal that no later byte can change is
reported by :meth:`StreamInspector.feed`; only the VMDK footer, the VHD footer and the length of
a raw image need the end of the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imageport.config import Settings
from imageport.errors import UnsafeImage
from imageport.pipeline.safety import headers, vhd, vmdk
from imageport.pipeline.safety.oslo import format_inspector

_Inspector = format_inspector.FileInspector
_Detected = tuple[_Inspector | None, str, str | None]  # (oslo inspector, name, subformat)

_HEAD_SLICE = 64 * 1024  # bytes given to oslo at a time before the decision point
HEAD_SIZE = 512  # bytes kept from the start: every header we parse ourselves fits in it
#: Bytes kept from the end: the VMDK stream footer (oslo's EndCaptureRegion keeps as much);
#: the VHD footer is the last 512 of them.
_TAIL_SIZE = vmdk.FOOTER_TAIL
#: Content that may turn out to be a fixed VHD once its footer is seen at EOF.
_RAW_LIKE = frozenset({"raw", "gpt", "iso"})
#: oslo safety-check names mapped to our stable reason codes.
_CHECK_CODES = {
    "backing_file": "backing_file",
    "data_file": "data_file",
    "unknown_features": "unknown_features",
    "descriptor": "vmdk_extent",
    "footer": "vmdk_structure",
    "mbr": "mbr_invalid",
    "version": "encrypted",
    "passphrase": "encrypted",
}


@dataclass(frozen=True)
class Verdict:
    """What inspection concluded about a byte stream.

    ``detected_format`` uses Image API names (``gpt`` content is ``raw``; several matches are
    joined with ``+``); ``subformat`` refines it where qemu-img's probe differs (``fixed`` VHD).
    """

    accepted: bool
    detected_format: str | None
    virtual_size: int | None
    reason_code: str | None = None
    message: str = ""
    subformat: str | None = None

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
            "subformat": self.subformat,
        }


def reject(detected: str | None, code: str, message: str) -> Verdict:
    """A refusal with a reason code from the corpus vocabulary."""
    return Verdict(
        accepted=False,
        detected_format=detected,
        virtual_size=None,
        reason_code=code,
        message=message,
    )


class StreamInspector:
    """Feeds chunks to every oslo format inspector; decides early when it can, else at EOF."""

    def __init__(self, declared: str | None, settings: Settings) -> None:
        self._declared = declared
        self._settings = settings
        self._running = {name: cls() for name, cls in format_inspector.ALL_FORMATS.items()}
        self._errors: dict[str, str] = {}
        self._head = bytearray()
        self._tail = b""
        self._tail_fed: list[format_inspector.FileInspector] = []
        self._decided = False
        self.total = 0

    def feed(self, chunk: memoryview | bytes) -> Verdict | None:
        """Show the next chunk; return a refusal as soon as it is certain, else None."""
        self.total += len(chunk)
        if len(self._head) < HEAD_SIZE:
            self._head += chunk[: HEAD_SIZE - len(self._head)]
        # Keep the last bytes for the VHD and VMDK footers: one small copy per chunk.
        if len(chunk) >= _TAIL_SIZE:
            self._tail = bytes(chunk[-_TAIL_SIZE:])
        else:
            self._tail = (self._tail + bytes(chunk))[-_TAIL_SIZE:]
        if self._decided:
            # Past the decision point only end regions (VMDK footer) still want bytes, and
            # they keep only the last 1536: hand them that much instead of the whole chunk.
            for inspector in self._tail_fed:
                self._eat(inspector, chunk[-_TAIL_SIZE:])
            return None
        # Until the decision point, oslo sees the bytes in small slices: its inspectors add
        # capture regions only between two chunks (VHDX finds its virtual-size item one chunk
        # after its metadata table), so one 8 MiB chunk would hide regions it already passed.
        for start in range(0, len(chunk), _HEAD_SLICE):
            piece = chunk[start : start + _HEAD_SLICE]
            for inspector in list(self._running.values()):
                self._eat(inspector, piece)
        if not all(_only_end_regions_pending(i) for i in self._running.values()):
            return None
        self._decided = True
        self._tail_fed = [i for i in self._running.values() if not i.complete]
        verdict = self._evaluate(at_eof=False)
        return verdict if verdict is not None and not verdict.accepted else None

    def verdict(self) -> Verdict:
        """Finish the stream and decide: one safe format, equal to the declared one."""
        for inspector in self._running.values():
            inspector.finish()
        verdict = self._evaluate(at_eof=True)
        assert verdict is not None  # noqa: S101 - at EOF every question has an answer
        return verdict

    def best_guess(self) -> str:
        """The format the bytes seen so far look like, for a refusal that came from elsewhere."""
        matches = sorted(
            _public_name(n)
            for n, i in self._running.items()
            if n != "raw" and i.complete and i.format_match
        )
        return "+".join(matches) if matches else headers.magic_format(self._head) or "raw"

    def _eat(self, inspector: format_inspector.FileInspector, data: memoryview | bytes) -> None:
        try:
            # oslo annotates bytes, but only slices and concatenates: any buffer works.
            inspector.eat_chunk(data)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - an inspector failure only excludes it
            self._errors[inspector.NAME] = str(exc)
            self._running.pop(inspector.NAME, None)
            if inspector in self._tail_fed:
                self._tail_fed.remove(inspector)

    def _evaluate(self, *, at_eof: bool) -> Verdict | None:  # noqa: PLR0911
        """The verdict, or None when (before EOF) acceptance is still possible."""
        if at_eof and self.total == 0:
            return reject(
                "raw", "empty_image", "the image is empty: upload the disk image file (rule empty)"
            )
        early = self._by_magic(at_eof=at_eof)
        if early is not None:
            return early
        detected, refused = self._detect(at_eof=at_eof)
        if refused is not None:
            return refused
        if detected is None:
            return None  # raw-looking content declared vhd: only the footer at EOF can tell
        inspector, name, subformat = detected
        if self._declared is not None and name != self._declared:
            return reject(
                name,
                "format_mismatch",
                f"the image content is {name} but disk_format is {self._declared}: "
                f"declare disk_format={name} if that is what you meant "
                "(rule declared_format, field: disk_format)",
            )
        if name not in self._settings.allowed_disk_formats:
            return reject(
                name,
                "banned_format",
                f"disk format {name} is not accepted here (rule allowed_disk_formats)",
            )
        problem = self._problem(inspector, name, subformat, at_eof=at_eof)
        if problem is not None:
            return reject(name, *problem)
        size = self._virtual_size(inspector, name, subformat)
        problem = headers.virtual_size_problem(size, self._settings.max_virtual_size)
        if problem is not None:
            return reject(name, *problem)
        if not at_eof:
            return None
        return Verdict(accepted=True, detected_format=name, virtual_size=size, subformat=subformat)

    def _by_magic(self, *, at_eof: bool) -> Verdict | None:  # noqa: PLR0911 - one per rule
        """Formats that are refused whatever else the bytes say, and broken headers."""
        claimed = headers.magic_format(self._head)
        if claimed in ("qcow", "qed"):
            return reject(
                claimed,
                "banned_format",
                f"{claimed} images are not accepted (rule banned_format, field: magic)",
            )
        if claimed == "luks":
            return reject(
                "luks",
                "encrypted",
                "LUKS-encrypted images cannot be inspected (rule encrypted, field: magic)",
            )
        if claimed is None:
            return None
        if claimed == "vmdk" and (at_eof or len(self._head) == HEAD_SIZE):
            problem = vmdk.header_problem(self._head)  # names the field oslo's error hides
            if problem is not None:
                return reject(claimed, *problem)
        if claimed in self._errors:
            code = "vmdk_structure" if claimed == "vmdk" else "truncated"
            return reject(
                claimed,
                code,
                f"the {claimed} header is invalid: {self._errors[claimed]} "
                f"(rule header, oslo.utils' {claimed} inspector)",
            )
        running = self._running.get(claimed)
        if at_eof and running is not None and not running.complete:
            return reject(
                claimed,
                "truncated",
                f"the file ends inside its {claimed} header: upload the complete image "
                "(rule header, field: file length)",
            )
        return None

    @property
    def _vhd_tail(self) -> bytes:
        return self._tail[-vhd.FOOTER_SIZE :]

    def _detect(self, *, at_eof: bool) -> tuple[_Detected | None, Verdict | None]:
        # Before EOF, an inspector that only waits for an end region (a VMDK whose grain
        # directory is at the end waits for its footer) already knows its format: counting it
        # as no match would call a VMware streamOptimized file raw.
        matches = [
            i
            for n, i in self._running.items()
            if n != "raw"
            and (i.complete or (not at_eof and _only_end_regions_pending(i)))
            and i.format_match
        ]
        names = {m.NAME for m in matches}
        if names == {"iso", "gpt"}:  # a hybrid ISO carries an MBR: it is an ISO
            matches = [m for m in matches if m.NAME == "iso"]
            names = {"iso"}
        footer = vhd.parse_footer(self._vhd_tail) if at_eof and self.total > HEAD_SIZE else None
        only = matches[0].NAME if len(matches) == 1 else "raw"
        if footer is not None and len(matches) <= 1 and only in _RAW_LIKE:
            # Raw bytes followed by a VHD footer: a fixed VHD (header-only probes say raw).
            return (self._running.get(only, matches[0] if matches else None), "vhd", "fixed"), None
        if footer is not None and only not in ("vhd", *_RAW_LIKE):
            names.add("vhd")
        if len(names) > 1:
            found = "+".join(sorted(_public_name(n) for n in names))
            return None, reject(
                found,
                "multiple_formats",
                f"the image matches {found} at once (rule single_format)",
            )
        if not matches:
            inspector, oslo_name = self._running["raw"], "raw"
        else:
            inspector, oslo_name = matches[0], matches[0].NAME
        name = _public_name(oslo_name)
        if not at_eof and oslo_name in _RAW_LIKE and self._declared in (name, "vhd"):
            return None, None  # a footer at EOF could still make this a fixed VHD
        return (inspector, name, "gpt" if oslo_name == "gpt" else None), None

    def _problem(
        self, inspector: _Inspector | None, name: str, subformat: str | None, *, at_eof: bool
    ) -> tuple[str, str] | None:
        head = self._head
        ignored: frozenset[str] = frozenset()
        if name == "qcow2":
            problem = headers.qcow2_problem(head)
        elif name == "vmdk":
            problem = self._vmdk_problem(inspector, at_eof=at_eof)
            if not getattr(inspector, "desc_text", None):
                # oslo decodes the descriptor as ASCII only, then finds "no descriptor" in the
                # UTF-8 one VMware writes for a non-ASCII name; ours read it, with oslo's rules.
                ignored = frozenset({"descriptor"})
        elif name == "vhd":
            fixed = subformat == "fixed"
            source = self._vhd_tail if fixed else head
            problem = vhd.disk_type_problem(int.from_bytes(source[60:64], "big"), fixed=fixed)
        elif name == "vdi":
            problem = headers.vdi_problem(head)
        else:
            problem = None
        # For a fixed VHD the inspector is that of the disk inside (raw, gpt, iso): a GPT disk
        # keeps its protective-MBR rules when wrapped.
        if problem is None and inspector is not None and inspector.NAME == "gpt":
            problem = headers.mbr_problem(head)
        if problem is not None:
            return problem
        if inspector is not None and (at_eof or inspector.complete):
            return _oslo_safety(inspector, name, ignored)
        return None

    def _vmdk_problem(
        self, inspector: _Inspector | None, *, at_eof: bool
    ) -> tuple[str, str] | None:
        header = vmdk.parse_header(self._head)
        if header is None or inspector is None:  # no KDMV: a text descriptor file
            text = vmdk.decode_descriptor(inspector.region("descriptor").data) if inspector else ""
            create_type = ", ".join(vmdk.create_types(text)) or "missing"
            return (
                "vmdk_subformat",
                f"VMDK descriptor field createType is {create_type} in a text descriptor file "
                "(no KDMV header): its data lives in the other files it names; upload a "
                "single-file monolithicSparse or streamOptimized VMDK (rule vmdk_descriptor_file)",
            )
        text = vmdk.decode_descriptor(inspector.region("descriptor").data)
        problem = vmdk.descriptor_problem(text, self._settings.allowed_vmdk_create_types)
        if problem is None and at_eof:
            problem = vmdk.footer_problem(header, self._tail, self.total)
        return problem

    def _virtual_size(self, inspector: _Inspector | None, name: str, subformat: str | None) -> int:
        if subformat == "fixed":
            parsed = vhd.parse_footer(self._vhd_tail)
            return parsed.virtual_size if parsed is not None else 0
        if name == "raw" or inspector is None:
            return self.total
        if name == "vhd":  # oslo reads original_size; qemu reads current_size or geometry
            parsed = vhd.parse_footer(self._head)
            if parsed is not None:
                return parsed.virtual_size
        if name == "vmdk":  # oslo says 0 when it could not decode the descriptor as ASCII
            header = vmdk.parse_header(self._head)
            return header.virtual_size if header is not None else 0
        size = int(inspector.virtual_size)
        # oslo reports 0 for UDF ISOs (no primary volume descriptor): the length is the size.
        return size or (self.total if name == "iso" else 0)


def _only_end_regions_pending(inspector: format_inspector.FileInspector) -> bool:
    # oslo keeps regions in a private dict; EndCaptureRegions complete only at EOF.
    regions = inspector._capture_regions.values()  # noqa: SLF001 - pinned oslo.utils <11
    return all(r.complete or isinstance(r, format_inspector.EndCaptureRegion) for r in regions)


def _oslo_safety(
    inspector: format_inspector.FileInspector, name: str, ignored: frozenset[str]
) -> tuple[str, str] | None:
    """oslo.utils' own safety checks, except those in ``ignored`` (ours replaced them)."""
    try:
        inspector.safety_check()
    except format_inspector.SafetyCheckFailed as exc:
        failures = {k: v for k, v in exc.failures.items() if k not in ignored}
        if not failures:
            return None
        check = sorted(failures)[0].removeprefix("inner_")
        detail = "; ".join(f"{k}: {v}" for k, v in failures.items())
        code = _CHECK_CODES.get(check, "format_mismatch")
        if check == "descriptor" and "subformat" in detail.lower():
            code = "vmdk_subformat"
        return (
            code,
            f"the {name} image failed oslo.utils' safety checks ({detail}) (rule oslo_{check})",
        )
    except format_inspector.ImageFormatError as exc:
        return "truncated", f"the {name} image is incomplete: {exc} (rule oslo_complete)"
    return None


def _public_name(oslo_name: str) -> str:
    # GPT/MBR disks are raw disks to Glance and qemu-img.
    return "raw" if oslo_name == "gpt" else oslo_name
