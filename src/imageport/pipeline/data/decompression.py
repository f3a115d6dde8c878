"""One layer of gzip, zstd or xz, found by magic bytes and streamed under a hard output cap.

The compression is recognised from the first bytes of the received stream, whatever the
request's ``container_format`` says. Exactly one layer is undone: decompressed bytes that start
with a compression magic again are refused (``nested_compression``; every layer multiplies a
bomb's ratio). The cap counts bytes as they come out of the decoder and ignores whatever size
the stream claims (gzip ISIZE is mod 2**32, zstd's Frame_Content_Size can lie), so a bomb is
stopped after ``max_decompressed_bytes``. A stream that ends early or does not add up
is refused as ``corrupt_compression``.

Errors raised here::

    SizeLimitExceeded(code="decompression_limit")   more output than the cap
    UnsafeImage(code="nested_compression")           a second compressed layer inside
    UnsafeImage(code="corrupt_compression")          truncated, trailing junk, bad CRC, lies
"""

from __future__ import annotations

import lzma
import zlib
from collections.abc import Generator, Iterator
from typing import Protocol

import zstandard

from imageport.errors import SizeLimitExceeded, UnsafeImage
from imageport.pipeline.data.zstdframes import ZstdFrames

#: Magic bytes at offset 0 of each compression we undo (RFC 1952, RFC 8878, xz file format).
MAGICS: dict[str, bytes] = {
    "gzip": b"\x1f\x8b\x08",
    "zstd": b"\x28\xb5\x2f\xfd",
    "xz": b"\xfd7zXZ\x00",
}
#: The reason codes this module raises (all permanent).
REASON_CODES = frozenset({"decompression_limit", "nested_compression", "corrupt_compression"})
MAGIC_LENGTH = max(len(m) for m in MAGICS.values())  # bytes needed to tell them apart
ZSTD_MAX_WINDOW = 1 << 27  # bytes; libzstd's own default decoding limit (128 MiB), made explicit
XZ_MEMLIMIT = 256 * 1024**2  # bytes the xz decoder may allocate (xz -9 needs 65 MiB)
_INPUT_SLICE = 1024 * 1024  # bytes of compressed input given to zlib/lzma per call


def detect(head: bytes | bytearray | memoryview) -> str | None:
    """The compression whose magic starts ``head`` (``gzip``, ``zstd``, ``xz``), or None."""
    start = bytes(head[:MAGIC_LENGTH])
    return next((name for name, magic in MAGICS.items() if start.startswith(magic)), None)


class _Decoder(Protocol):
    """zlib's and lzma's streaming decompressor objects, as used here."""

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: memoryview | bytes, max_length: int = ...) -> bytes: ...


def decompress(
    kind: str, received: Iterator[memoryview], out: bytearray, limit: int
) -> Iterator[memoryview]:
    """Yield the decompressed bytes of ``received`` (one ``kind`` layer), at most ``limit``.

    Args:
        kind: ``gzip``, ``zstd`` or ``xz`` (see :func:`detect`).
        received: the compressed stream; each view must stay valid until the next is asked for.
        out: a reused output buffer (zstd decompresses into it; its size bounds each piece).
        limit: the most decompressed bytes accepted.

    Raises:
        SizeLimitExceeded: more than ``limit`` bytes came out.
        UnsafeImage: nested or corrupt compression.
    """
    pieces = _zstd(received, out) if kind == "zstd" else _zlib_like(kind, received, len(out))
    return _guarded(kind, pieces, limit)


def _guarded(kind: str, pieces: Iterator[memoryview], limit: int) -> Iterator[memoryview]:
    total = 0
    head = b""
    try:
        for piece in pieces:
            if len(head) < MAGIC_LENGTH:
                head += bytes(piece[: MAGIC_LENGTH - len(head)])
                inner = detect(head)
                if inner is not None:
                    raise UnsafeImage(
                        f"the {kind} stream holds {inner}-compressed data: compress the disk "
                        "image once, not twice",
                        code="nested_compression",
                    )
            total += len(piece)
            if total > limit:
                raise SizeLimitExceeded(
                    f"the {kind} stream decompresses to more than max_decompressed_bytes="
                    f"{limit}: upload a smaller image or ask for a higher limit",
                    code="decompression_limit",
                )
            yield piece
    except (zlib.error, lzma.LZMAError, zstandard.ZstdError) as exc:
        raise _corrupt(kind, str(exc)) from exc


def _corrupt(kind: str, detail: str) -> UnsafeImage:
    return UnsafeImage(
        f"the {kind} stream is damaged ({detail}): upload the complete, unmodified file",
        code="corrupt_compression",
    )


def _zlib_like(kind: str, received: Iterator[memoryview], piece_size: int) -> Iterator[memoryview]:
    new_decoder = _gzip_decoder if kind == "gzip" else _xz_decoder
    decoder = new_decoder()
    for chunk in received:
        for pos in range(0, len(chunk), _INPUT_SLICE):
            data: memoryview | bytes = chunk[pos : pos + _INPUT_SLICE]
            while data:
                if decoder.eof:
                    # Concatenated gzip members and xz streams are valid; junk after the end
                    # makes the new decoder raise, which is reported as corrupt.
                    decoder = new_decoder()
                data = yield from _pump(decoder, data, piece_size)
    if not decoder.eof:
        raise _corrupt(kind, "the stream ends before its end marker")


def _pump(
    decoder: _Decoder, data: memoryview | bytes, piece_size: int
) -> Generator[memoryview, None, bytes]:
    """Give ``data`` to ``decoder``, yield its output in pieces; return input left after EOF."""
    while True:
        # max_length bounds each piece; zlib keeps the unread input in unconsumed_tail, lzma
        # inside itself (a full piece means it may hold more: call again with no input).
        produced = decoder.decompress(data, piece_size)
        if produced:
            yield memoryview(produced)
        if decoder.eof:
            return decoder.unused_data
        data = getattr(decoder, "unconsumed_tail", b"")
        if not data and len(produced) < piece_size:
            return b""


def _gzip_decoder() -> _Decoder:
    # wbits 16+15: gzip wrapper, 32 KiB window; zlib checks the CRC32 and (mod 2**32) ISIZE.
    decoder: _Decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    return decoder


def _xz_decoder() -> _Decoder:
    decoder: _Decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)
    return decoder


class _ChunkReader:
    """A read()-able view over the received chunks, handing out slices without copying."""

    def __init__(self, received: Iterator[memoryview], frames: ZstdFrames) -> None:
        self._received = received
        self._frames = frames
        self._current = memoryview(b"")
        self.exhausted = False

    def read(self, size: int = -1) -> memoryview:
        """Up to ``size`` bytes; an empty view at the end of the stream."""
        if not self._current:
            chunk = next(self._received, None)
            if chunk is None:
                self.exhausted = True
                return memoryview(b"")
            # The frame walker sees every compressed byte once, to tell a cut stream.
            self._frames.feed(chunk)
            self._current = chunk
        size = len(self._current) if size < 0 else size
        piece, self._current = self._current[:size], self._current[size:]
        return piece


def _zstd(received: Iterator[memoryview], out: bytearray) -> Iterator[memoryview]:
    frames = ZstdFrames()
    source = _ChunkReader(received, frames)
    decompressor = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    # stream_reader bounds each read by the buffer we give it, unlike decompressobj, which
    # returns everything a chunk expands to (16 GiB from 512 KiB of RLE blocks).
    reader = decompressor.stream_reader(
        # It only calls read(); the stubs ask for a whole IO[bytes].
        source,  # type: ignore[arg-type]
        read_across_frames=True,
        closefd=False,
    )
    view = memoryview(out)
    while True:
        n = reader.readinto(out)
        if not n:
            break
        yield view[:n]
    # python-zstandard reports a cut-off frame as a clean end: the frame walker knows better.
    if not frames.complete:
        raise _corrupt("zstd", "the stream ends inside a frame")
