"""Live per-stage progress of one task, read from the records (bytes, rate, ETA)."""

from __future__ import annotations

import threading
import time

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from imageport.cli.common import err_console
from imageport.pipeline import Services
from imageport.records import TaskStatus, repository

POLL_INTERVAL = 0.25  # seconds between two reads of the task's stage runs
_FINISHED = (TaskStatus.SUCCESS, TaskStatus.FAILURE)


def wait_for_task(
    services: Services,
    task_id: str,
    *,
    show: bool,
    processed: threading.Event | None = None,
) -> TaskStatus:
    """Poll the task until it succeeds or fails; draw one progress row per stage on stderr.

    ``processed`` (the embedded worker's) is set when a job message was processed: the poll
    then reads the task at once instead of sleeping out its interval.
    """
    with Progress(
        TextColumn("{task.description:<8}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[state]}"),
        console=err_console,
        disable=not show,
        transient=False,
    ) as bars:
        rows: dict[str, TaskID] = {}
        while True:
            with services.db.session() as session:
                task = repository.get_task(session, task_id)
                status = TaskStatus(task.status)
                for name, run in repository.latest_stage_runs(session, task_id).items():
                    if name not in rows:
                        rows[name] = bars.add_task(name, total=None, state="")
                    total = run.bytes_total
                    done = run.bytes_done or 0
                    if run.status in ("done", "skipped") and total is None:
                        total = done or 1
                        done = total
                    bars.update(rows[name], completed=done, total=total, state=run.status)
            if status in _FINISHED:
                return status
            if processed is None:
                time.sleep(POLL_INTERVAL)
            elif processed.wait(POLL_INTERVAL):
                processed.clear()
