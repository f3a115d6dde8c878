"""Fuzzing the VMware stream footer: what the inspector vets is what qemu-img uses.

qemu replaces the header of a GD_AT_END file with the copy in its footer, so the footer rule
(:func:`imageport.pipeline.safety.vmdk.footer_problem`) must make the two agree. hypothesis
changes bytes of the header and of the last three sectors (footer marker, footer, EOS marker)
of a VMware-layout streamOptimized file and cuts or extends it; for every mutant the inspector
must answer quickly, and when it accepts one that qemu-img opens, qemu-img must report the
inspector's virtual size and no extent but the file itself.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import producers
from imageport.config import Settings
from imageport.pipeline.safety.inspector import StreamInspector, Verdict
from images import MIB, make_raw

MAX_EXAMPLES = 400
INSPECT_BUDGET = 2.0  # seconds one mutant may take in the inspector
QEMU_BUDGET = 15.0  # seconds of qemu-img info calls across the whole run
SETTINGS = Settings()
_SEED: list[bytes] = []
_WORK: list[Path] = []
_SPENT = [0.0]


@pytest.fixture(scope="module", autouse=True)
def _seed(tmp_path_factory) -> None:
    root = tmp_path_factory.mktemp("footer-seed")
    raw = make_raw(root / "disk.raw", virtual=1 * MIB, data=96 * 1024, seed=7)
    _SEED[:] = [producers.vmware_stream_optimized(root, raw, "seed.vmdk").read_bytes()]
    _WORK[:] = [root]
    _SPENT[0] = 0.0


def _inspect(data: bytes, chunk: int) -> Verdict:
    inspector = StreamInspector("vmdk", SETTINGS)
    view = memoryview(data)
    for start in range(0, len(view), chunk):
        early = inspector.feed(view[start : start + chunk])
        if early is not None:
            return early
    return inspector.verdict()


def _qemu_info(data: bytes) -> dict | None:
    if _SPENT[0] > QEMU_BUDGET:
        return None
    path = _WORK[0] / "mutant.vmdk"
    path.write_bytes(data)
    started = time.monotonic()
    proc = subprocess.run(
        ["prlimit", "--as=1073741824", "--cpu=10", "--", "qemu-img", "info", "-f", "vmdk",
         "--output=json", str(path)],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    _SPENT[0] += time.monotonic() - started
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


# (in the last 1536 bytes?, offset, new byte value)
_mutation = st.tuples(st.booleans(), st.integers(0, 1535), st.integers(0, 255))


@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
    phases=[Phase.explicit, Phase.generate],
)
@given(
    mutations=st.lists(_mutation, min_size=1, max_size=4),
    resize=st.sampled_from([0, 0, 0, -512, -1, 1, 512]),
    chunk=st.sampled_from([509, 65536, 8 * MIB]),
)
def test_an_accepted_footer_is_the_header_qemu_uses(mutations, resize, chunk):
    data = bytearray(_SEED[0])
    for at_tail, offset, value in mutations:
        # Header mutations stay in its first 80 bytes (the fields); tail ones anywhere.
        position = len(data) - 1536 + offset if at_tail else offset % 80
        data[position] = value
    if resize < 0:
        del data[resize:]
    elif resize > 0:
        data += bytes(resize)

    started = time.monotonic()
    verdict = _inspect(bytes(data), chunk)
    assert time.monotonic() - started < INSPECT_BUDGET
    if not verdict.accepted:
        assert verdict.reason_code
        assert "(rule " in verdict.message
        return
    info = _qemu_info(bytes(data))
    if not info:
        return  # qemu-img refuses it (the second opinion would too), or the budget is spent
    assert info["virtual-size"] == verdict.virtual_size
    for extent in info.get("format-specific", {}).get("data", {}).get("extents", []):
        assert Path(extent["filename"]).name == "mutant.vmdk"
