"""Fuzzing: mutated headers of real images never crash, hang or sneak a reference past us.

Small seed images of every accepted format are made with qemu-img once per module. hypothesis
then flips bytes in their first kilobyte (every header, the VMDK descriptor) and their last
512 bytes (VHD footer), and truncates some. For each mutant the stream inspector must return a
Verdict, quickly; when it accepts, ``qemu-img info -f`` must not find a backing file, a data
file or a VMDK extent other than the file itself (checked within a time budget).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from imageport.config import Settings
from imageport.pipeline.safety.inspector import StreamInspector, Verdict
from imageport.pipeline.safety.qemu import qemu_format

SEEDS = {
    "qcow2": ["-f", "qcow2"],
    "qcow2v2": ["-f", "qcow2", "-o", "compat=0.10"],
    "vmdk": ["-f", "vmdk"],
    "vmdk_stream": ["-f", "vmdk", "-o", "subformat=streamOptimized"],
    "vhd": ["-f", "vpc"],
    "vhd_fixed": ["-f", "vpc", "-o", "subformat=fixed"],
    "vhdx": ["-f", "vhdx"],
    "vdi": ["-f", "vdi"],
}
MAX_EXAMPLES = 3000
INSPECT_BUDGET = 2.0  # seconds one mutant may take in the inspector
QEMU_BUDGET = 25.0  # seconds of qemu-img info calls across the whole run
SETTINGS = Settings(max_virtual_size=1024**4)


_SEED_BYTES: list[bytes] = []  # filled once per module; kept out of hypothesis' arguments


@pytest.fixture(scope="module", autouse=True)
def _seeds(tmp_path_factory) -> None:
    root = tmp_path_factory.mktemp("seeds")
    _SEED_BYTES.clear()
    for name, args in SEEDS.items():
        path = root / name
        subprocess.run(["qemu-img", "create", "-q", *args, str(path), "1M"], check=True)
        _SEED_BYTES.append(path.read_bytes())


def _inspect(data: bytes, declared: str | None, chunk: int) -> Verdict:
    inspector = StreamInspector(declared, SETTINGS)
    view = memoryview(data)
    for start in range(0, len(view), chunk):
        early = inspector.feed(view[start : start + chunk])
        if early is not None:
            return early
    return inspector.verdict()


class _QemuOracle:
    """``qemu-img info -f`` on accepted mutants, while the time budget lasts."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.spent = 0.0
        self.checked = 0

    def info(self, data: bytes, fmt: str) -> dict | None:
        if self.spent > QEMU_BUDGET:
            return None
        path = self.where / "mutant"
        path.write_bytes(data)
        started = time.monotonic()
        proc = subprocess.run(
            ["prlimit", "--as=1073741824", "--cpu=10", "--", "qemu-img", "info", "-f",
             qemu_format(fmt), "--output=json", str(path)],
            capture_output=True,
            timeout=30,
            check=False,
        )  # fmt: skip
        self.spent += time.monotonic() - started
        self.checked += 1
        return json.loads(proc.stdout) if proc.returncode == 0 else {}


_ORACLE: list[_QemuOracle] = []


@pytest.fixture(scope="module", autouse=True)
def _oracle(tmp_path_factory) -> None:
    _ORACLE[:] = [_QemuOracle(tmp_path_factory.mktemp("oracle"))]


_mutation = st.tuples(st.booleans(), st.integers(0, 1023), st.integers(0, 255))


@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,  # the same cases on every run: CI failures reproduce
    deadline=None,  # time is checked explicitly below, against a generous budget
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
    # Shrinking a failure of this size can take minutes; the unshrunk example is printed.
    phases=[Phase.explicit, Phase.generate],
)
@given(
    which=st.integers(0, len(SEEDS) - 1),
    mutations=st.lists(_mutation, min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 4096)),
    chunk=st.sampled_from([509, 4096, 65536, 8 * 1024 * 1024]),  # odd sizes split headers
    declare=st.booleans(),
)
def test_mutated_headers_never_crash_hang_or_leak(which, mutations, cut, chunk, declare):
    data = bytearray(_SEED_BYTES[which])
    for at_tail, offset, value in mutations:
        position = len(data) - 512 + offset % 512 if at_tail else offset
        data[position] = value
    if cut is not None:
        del data[cut:]
    declared = list(SEEDS)[which].split("_")[0].removesuffix("v2") if declare else None

    started = time.monotonic()
    verdict = _inspect(bytes(data), declared, chunk)
    assert isinstance(verdict, Verdict)
    assert time.monotonic() - started < INSPECT_BUDGET
    if not verdict.accepted:
        assert verdict.reason_code
        return
    info = _ORACLE[0].info(bytes(data), verdict.detected_format or "raw")
    if not info:
        return  # qemu-img refuses it too, or the budget is spent
    assert "backing-filename" not in info
    extra = info.get("format-specific", {}).get("data", {})
    assert "data-file" not in extra
    for extent in extra.get("extents", []):
        assert Path(extent["filename"]).name == "mutant"
