"""One layer of gzip/zstd/xz, streamed under an output cap that ignores the stream's claims."""

from __future__ import annotations

import gzip
import lzma
import struct
import zlib

import pytest
import zstandard

from imageport.errors import PipelineError
from imageport.pipeline.data.decompression import decompress, detect

MIB = 1024 * 1024


def _chunks(data: bytes, size: int = 64 * 1024):
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield view[start : start + size]


def _run(data: bytes, limit: int = 64 * MIB, chunk: int = 64 * 1024) -> bytes:
    kind = detect(data)
    assert kind is not None
    return b"".join(bytes(p) for p in decompress(kind, _chunks(data, chunk), bytearray(MIB), limit))


PAYLOAD = bytes(range(256)) * 4096 + b"\x00" * 3 * MIB


@pytest.mark.parametrize(
    ("kind", "compress"),
    [
        ("gzip", lambda d: gzip.compress(d, mtime=0)),
        ("zstd", lambda d: zstandard.ZstdCompressor().compress(d)),
        ("xz", lzma.compress),
    ],
)
@pytest.mark.parametrize("chunk", [7, 4096, 8 * MIB])
def test_each_kind_round_trips_at_any_chunk_size(kind, compress, chunk):
    data = compress(PAYLOAD)
    assert detect(data) == kind
    assert _run(data, chunk=chunk) == PAYLOAD


def test_concatenated_members_and_frames_are_one_layer():
    for compress in (gzip.compress, lzma.compress, zstandard.ZstdCompressor().compress):
        assert _run(compress(b"a" * 1000) + compress(b"b" * 1000)) == b"a" * 1000 + b"b" * 1000


def _code(data: bytes, **kwargs) -> str:
    with pytest.raises(PipelineError) as caught:
        _run(data, **kwargs)
    return caught.value.code


def test_output_cap_stops_bombs_whatever_they_claim():
    zeros = bytes(32 * MIB)
    assert _code(gzip.compress(zeros), limit=8 * MIB) == "decompression_limit"
    assert _code(lzma.compress(zeros), limit=8 * MIB) == "decompression_limit"
    # A zstd frame that declares 1 KiB but carries 32 MiB: the decoder refuses or the cap does.
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(zeros)
    assert _code(frame, limit=8 * MIB) in ("decompression_limit", "corrupt_compression")


def test_gzip_isize_lie_is_caught_by_the_cap_not_trusted():
    body = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = body.compress(bytes(20 * MIB)) + body.flush()
    lying = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + deflated
    lying += struct.pack("<II", zlib.crc32(bytes(20 * MIB)), 1024)  # ISIZE says 1 KiB
    assert _code(lying, limit=4 * MIB) == "decompression_limit"


def test_zstd_rle_bomb_is_stopped_without_buffering_it():
    header = b"\x28\xb5\x2f\xfd\x00\x38"  # magic, no content size, 128 KiB window
    rle = (128 * 1024 << 3 | 1 << 1).to_bytes(3, "little") + b"\x00"  # RLE block of zeros
    last = (128 * 1024 << 3 | 1 << 1 | 1).to_bytes(3, "little") + b"\x00"
    bomb = header + rle * 4095 + last  # 512 MiB from 16 KiB
    assert _code(bomb, limit=16 * MIB) == "decompression_limit"


def test_nested_layers_are_refused():
    inner = gzip.compress(PAYLOAD)
    assert _code(gzip.compress(inner)) == "nested_compression"
    assert _code(zstandard.ZstdCompressor().compress(lzma.compress(PAYLOAD))) == (
        "nested_compression"
    )


@pytest.mark.parametrize(
    "compress", [gzip.compress, lzma.compress, zstandard.ZstdCompressor().compress]
)
def test_truncated_or_trailing_junk_is_corrupt(compress):
    data = compress(PAYLOAD)
    assert _code(data[: len(data) // 2]) == "corrupt_compression"
    assert _code(data[:-1]) == "corrupt_compression"
    assert _code(data + b"junk") == "corrupt_compression"


def test_detect_needs_the_magic_at_offset_zero():
    assert detect(b"\x00" + gzip.compress(b"x")) is None
    assert detect(b"QFI\xfb\x00\x00\x00\x03") is None
    assert detect(b"") is None
