"""Walks the frame and block headers of a zstd stream to tell whether it ended cleanly.

python-zstandard's ``stream_reader`` treats a stream cut inside a frame as a normal end, so a
truncated upload would decompress "successfully" to fewer bytes. This walker reads only the
headers (RFC 8878 §3.1): frame header, then one 3-byte header per block (at most 128 KiB of
content each), then the optional 4-byte checksum; skippable frames are skipped. Block content is
never looked at, so the cost is one small step per block, not per byte.
"""

from __future__ import annotations

import struct

_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK = 0xFFFFFFF0
_SKIPPABLE_MAGIC = 0x184D2A50
_DICT_ID_SIZES = (0, 1, 2, 4)  # bytes, by Dictionary_ID_Flag
_FCS_SIZES = (0, 2, 4, 8)  # bytes, by Frame_Content_Size_Flag (0 means 1 if single segment)
_BLOCK_RLE = 1
_BLOCK_RESERVED = 3


class ZstdFrames:
    """Consumes the compressed bytes in order; ``complete`` once they end on a frame boundary."""

    def __init__(self) -> None:
        self._want = 4  # header bytes needed for the current step
        self._header = bytearray()
        self._skip = 0  # content bytes to pass over before the next header
        self._step = self._magic
        self.frames = 0
        self.error: str | None = None
        self._checksum = False

    @property
    def complete(self) -> bool:
        """Whether every frame seen so far is finished and at least one frame was seen."""
        return self.error is None and self._at_frame_start() and self.frames > 0

    def _at_frame_start(self) -> bool:
        return self._step == self._magic and not self._header and not self._skip

    def feed(self, data: memoryview | bytes) -> None:
        """Advance over ``data``; structural errors are kept in ``error`` (decoding finds them)."""
        pos, end = 0, len(data)
        while pos < end and self.error is None:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._want - len(self._header), end - pos)
            self._header += data[pos : pos + take]
            pos += take
            if len(self._header) == self._want:
                header = bytes(self._header)
                self._header.clear()
                self._step(header)

    def _expect(self, size: int, step: object) -> None:
        self._want = size
        self._step = step  # type: ignore[assignment]

    def _magic(self, header: bytes) -> None:
        (magic,) = struct.unpack("<I", header)
        if magic == _ZSTD_MAGIC:
            self._expect(1, self._descriptor)
        elif magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
            self._expect(4, self._skippable_size)
        else:
            self.error = f"no zstd frame magic ({magic:#010x})"

    def _skippable_size(self, header: bytes) -> None:
        (self._skip,) = struct.unpack("<I", header)
        self._expect(4, self._magic)

    def _descriptor(self, header: bytes) -> None:
        fhd = header[0]
        single_segment = bool(fhd & 0x20)
        self._checksum = bool(fhd & 0x04)
        fcs_flag = fhd >> 6
        fcs = _FCS_SIZES[fcs_flag] or (1 if single_segment else 0)
        rest = (0 if single_segment else 1) + _DICT_ID_SIZES[fhd & 0x03] + fcs
        self._skip = rest  # window descriptor, dictionary id and content size are not needed
        self._expect(3, self._block)

    def _block(self, header: bytes) -> None:
        value = int.from_bytes(header, "little")
        last, kind, size = value & 1, (value >> 1) & 3, value >> 3
        if kind == _BLOCK_RESERVED:
            self.error = "reserved block type"
            return
        self._skip = 1 if kind == _BLOCK_RLE else size
        if not last:
            self._expect(3, self._block)
        elif self._checksum:
            self._expect(4, self._frame_end)
        else:
            self._frame_end(b"")

    def _frame_end(self, _checksum: bytes) -> None:
        self.frames += 1
        self._expect(4, self._magic)
