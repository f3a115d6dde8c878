"""Where worker processes run: each on its own share of the host's CPUs, children anywhere.

Why pin at all: a job is a chain of short hand-offs (worker → PostgreSQL → worker → qemu-img
→ worker), and the kernel places a woken task next to the one that woke it. Left alone, the
chains of two busy worker processes keep landing on the same CPU while another sits idle:
on 2 cores, 2 unpinned processes did about 1.6x the tiny imports of one, pinned ones
1.8-1.9x (``bench/workers.py``, which measures both). Processes get shares only when every job
thread can have a CPU of its own (processes * threads <= CPUs), so no process's job threads
are crowded into a share smaller than their number.

qemu-img and other children are started with the whole CPU set again (:func:`anywhere`), so
a conversion can still use every idle core.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterator

#: The CPUs this process could use before :func:`pin` narrowed it; None while not pinned.
_whole_set: frozenset[int] | None = None


def shares(
    processes: int, cpus: Collection[int], *, threads: int = 1
) -> list[frozenset[int]] | None:
    """Split ``cpus`` into ``processes`` disjoint shares of near-equal size, in CPU order.

    Returns None when pinning would not help: one process (it may use every CPU), or more job
    threads (``processes * threads``) than CPUs, so that some share would hold fewer CPUs than
    its process has threads; the kernel balances an overbooked host better.
    """
    ordered = sorted(cpus)
    if processes < 2 or processes * threads > len(ordered):
        return None
    size, extra = divmod(len(ordered), processes)
    result, start = [], 0
    for i in range(processes):
        end = start + size + (1 if i < extra else 0)
        result.append(frozenset(ordered[start:end]))
        start = end
    return result


def pin(cpus: Collection[int]) -> None:
    """Keep the calling thread, and every thread it starts later, on ``cpus``.

    Call it first thing in a new process, before any thread exists: on Linux the affinity
    belongs to a thread, and new threads inherit their creator's.
    """
    global _whole_set  # noqa: PLW0603 - one per process, set once at start-up
    _whole_set = frozenset(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus)


@contextlib.contextmanager
def anywhere() -> Iterator[None]:
    """Within the block, the calling thread (so a child it starts) may run on every CPU.

    A no-op unless :func:`pin` ran. Only the calling thread's own affinity changes, and it is
    put back on the way out.
    """
    if _whole_set is None:
        yield
        return
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, _whole_set)
    try:
        yield
    finally:
        os.sched_setaffinity(0, own)
