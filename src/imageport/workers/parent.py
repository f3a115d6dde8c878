"""A worker process stops when its supervisor dies, as it does on SIGTERM.

Without this, a supervisor killed with SIGKILL (an OOM kill, ``kill -9``, a crashed unit)
leaves its worker processes running on their own: still taking jobs, outside the group's
metrics, and a restarted group then runs more workers than configured. Two mechanisms, so
the death is noticed at once where the kernel helps and within a second everywhere:

* Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` makes the kernel send SIGTERM the moment the
  parent exits. (It fires when the *thread* that forked the child exits; the supervisor starts
  its children from its main thread, which lives as long as the supervisor.)
* Everywhere: a daemon thread compares ``os.getppid()`` with the supervisor's pid every
  :data:`POLL_SECONDS` (an orphan is re-parented to init or a subreaper) and sends this process
  SIGTERM when they differ. It also covers a parent that died before ``prctl`` was set.

Either way the process's own SIGTERM handler runs: stop taking jobs, checkpoint the running
stage within the grace period, release the lease (the job is requeued), exit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading

import structlog

log = structlog.get_logger(__name__)

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
POLL_SECONDS = 1.0


def watch_parent(parent_pid: int, *, interval: float = POLL_SECONDS) -> threading.Thread | None:
    """Send this process SIGTERM when ``parent_pid`` is no longer its parent.

    Returns the polling thread (None when the parent is gone already: SIGTERM was sent).
    """
    _set_pdeathsig()
    if os.getppid() != parent_pid:
        _orphaned(parent_pid)
        return None
    thread = threading.Thread(
        target=_poll, args=(parent_pid, interval), name="parent-watch", daemon=True
    )
    thread.start()
    return thread


def _set_pdeathsig() -> None:
    if not sys.platform.startswith("linux"):
        return
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed", errno=ctypes.get_errno())
    except (OSError, AttributeError):  # no usable libc (musl static builds): the poll remains
        log.warning("prctl unavailable; watching the supervisor by polling only")


def _poll(parent_pid: int, interval: float) -> None:
    stopped = threading.Event()  # never set: a plain sleep that tools show as a wait
    while os.getppid() == parent_pid:
        stopped.wait(interval)
    _orphaned(parent_pid)


def _orphaned(parent_pid: int) -> None:
    log.warning("supervisor is gone; stopping as on SIGTERM", supervisor=parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)
