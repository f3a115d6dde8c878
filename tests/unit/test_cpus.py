"""CPU shares of worker processes, and children that still run anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from imageport import cpus


@pytest.mark.parametrize(
    ("processes", "available", "expected"),
    [
        (2, [0, 1], [{0}, {1}]),
        (2, range(8), [{0, 1, 2, 3}, {4, 5, 6, 7}]),
        (3, range(8), [{0, 1, 2}, {3, 4, 5}, {6, 7}]),
        # A container's CPUs need not start at 0 or be contiguous: shares follow their order.
        (2, [6, 2, 7, 3], [{2, 3}, {6, 7}]),
        (4, [0, 1, 2, 3], [{0}, {1}, {2}, {3}]),
    ],
)
def test_shares_are_disjoint_near_equal_and_cover_every_cpu(processes, available, expected):
    assert cpus.shares(processes, available) == [frozenset(s) for s in expected]


@pytest.mark.parametrize(("processes", "available"), [(1, range(8)), (3, [0, 1]), (2, [0])])
def test_no_shares_for_one_process_or_fewer_cpus_than_processes(processes, available):
    assert cpus.shares(processes, available) is None


def test_shares_only_when_every_job_thread_has_a_cpu():
    assert cpus.shares(2, range(8), threads=4) == [frozenset(range(4)), frozenset(range(4, 8))]
    # 2 processes of 2 threads on 2 CPUs: pinned, each process would get 1 CPU for 2 jobs.
    assert cpus.shares(2, [0, 1], threads=2) is None
    assert cpus.shares(3, range(8), threads=3) is None


def _allowed() -> set[int]:
    """The CPUs a newly started child may use, as the kernel reports them."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, os; print(json.dumps(sorted(os.sched_getaffinity(0))))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(json.loads(out))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_a_pinned_thread_starts_children_that_may_run_anywhere(monkeypatch):
    monkeypatch.setattr(cpus, "_whole_set", None)
    whole = set(os.sched_getaffinity(0))
    seen: dict[str, object] = {}

    def body() -> None:
        # In a thread of its own: affinity is per thread, so the test process stays as it was.
        try:
            share = {min(whole)}
            cpus.pin(share)
            seen["own"] = set(os.sched_getaffinity(0))
            seen["plain child"] = _allowed()
            with cpus.anywhere():
                seen["child in anywhere()"] = _allowed()
            seen["own after"] = set(os.sched_getaffinity(0))
        except Exception as exc:  # noqa: BLE001 - surfaced below, in the test's thread
            seen["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert "error" not in seen, seen.get("error")
    assert seen["own"] == {min(whole)}
    assert seen["plain child"] == {min(whole)}
    assert seen["child in anywhere()"] == whole
    assert seen["own after"] == {min(whole)}
    assert set(os.sched_getaffinity(0)) == whole


def test_anywhere_is_a_no_op_when_not_pinned(monkeypatch):
    monkeypatch.setattr(cpus, "_whole_set", None)
    before = os.sched_getaffinity(0)
    with cpus.anywhere():
        assert os.sched_getaffinity(0) == before
    assert os.sched_getaffinity(0) == before
