"""Admin commands: ``worker``, ``watch``, ``cancel``, ``retry``, ``reap``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from imageport.cli.common import (
    EXIT_FAILED,
    errors_to_exit,
    print_json,
    services,
    settings,
)
from imageport.errors import InvalidRequest

# The pipeline, the records and the workers are imported inside the commands: see
# cli/common.py on start-up time.
if TYPE_CHECKING:
    from imageport.pipeline import Services

CANCEL_WAIT_SECONDS = 60.0  # how long `cancel` waits for the worker to stop the job


def worker_command(
    processes: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    threads: Annotated[int, typer.Option(min=1, help="Job threads per process.")] = 1,
    queues: Annotated[
        list[str] | None, typer.Option("--queues", help="Queues to consume (repeatable).")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics of all processes here.")
    ] = None,
    pin_cpus: Annotated[
        bool,
        typer.Option(
            help="Give each process its own share of the CPUs (when there is a CPU for "
            "every job thread: processes * threads <= CPUs); qemu-img still runs on any CPU."
        ),
    ] = True,
) -> None:
    """Run worker processes that take import jobs from the broker (distributed mode)."""
    conf = settings()
    if conf.is_embedded:
        typer.echo(
            "imageport worker needs a shared broker: set IMAGEPORT_BROKER_URL=redis://… "
            "(with memory:// every import runs inside the command that started it)",
            err=True,
        )
        raise typer.Exit(2)
    with errors_to_exit(), services(conf):
        pass  # fail fast on a bad configuration, before any process starts
    # Imported here: the supervisor brings the metrics server and the broker clients, which
    # no other command needs.
    from imageport.workers.supervisor import supervise

    code = supervise(
        conf,
        processes=processes,
        threads=threads,
        queues=queues or [],
        metrics_port=metrics_port,
        pin_cpus=pin_cpus,
    )
    raise typer.Exit(code)


def watch_command(task_id: str) -> None:
    """Show live per-stage progress of a task; exit 0 if it succeeds, 1 if it fails."""
    from imageport.cli.progress import wait_for_task
    from imageport.records import TaskStatus, repository

    conf = settings()
    with errors_to_exit(), services(conf) as svc:
        status = wait_for_task(svc, task_id, show=True)
        with svc.db.session() as session:
            task = repository.get_task(session, task_id)
            typer.echo(f"task {task_id}: {task.status} {task.message}".rstrip(), err=True)
    raise typer.Exit(0 if status == TaskStatus.SUCCESS else EXIT_FAILED)


def cancel_command(task_id: str) -> None:
    """Stop a running or queued import; its data is removed and the image goes back to queued."""
    from imageport.pipeline import run_import
    from imageport.records import TaskStatus, repository

    conf = settings()
    with errors_to_exit(), services(conf) as svc:
        with svc.db.session() as session:
            task = repository.get_task(session, task_id)
            if task.status in (TaskStatus.SUCCESS, TaskStatus.FAILURE):
                raise InvalidRequest(f"task {task_id} already ended ({task.status})")
            task.cancel_requested = True
        # A queued job is cancelled right here; a running one by its worker's heartbeat.
        run_import(svc, task_id, owner="cli-cancel")
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while time.monotonic() < deadline:
            with svc.db.session() as session:
                status = repository.get_task(session, task_id).status
            if status in (TaskStatus.SUCCESS, TaskStatus.FAILURE):
                typer.echo(f"task {task_id}: {status}")
                return
            time.sleep(0.2)
        typer.echo(f"task {task_id}: cancel requested; the worker has not stopped yet", err=True)
        raise typer.Exit(EXIT_FAILED)


def retry_command(
    task_id: str,
    from_stage: Annotated[
        str | None, typer.Option(help="Re-run this stage and all after it.")
    ] = None,
) -> None:
    """Re-run a failed import, by default from the stage that failed (reusing earlier output)."""
    from imageport.cli.jobs import Enqueuer
    from imageport.cli.progress import wait_for_task
    from imageport.records import TaskStatus

    conf = settings()
    with errors_to_exit(), services(conf) as svc:
        _reopen(svc, task_id, from_stage)
        enqueuer = Enqueuer(svc)
        with enqueuer as actors:
            actors.enqueue_import(task_id)
            if conf.is_embedded:
                status = wait_for_task(svc, task_id, show=True, processed=enqueuer.processed)
                raise typer.Exit(0 if status == TaskStatus.SUCCESS else EXIT_FAILED)
        typer.echo(f"task {task_id} queued again")


def reap_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Requeue or fail imports whose worker stopped renewing its lease; resend lost messages."""
    from imageport.cli.jobs import Enqueuer
    from imageport.workers.reaper import reap

    conf = settings()
    with errors_to_exit(), services(conf) as svc, Enqueuer(svc) as actors:
        report = reap(svc, actors.enqueue_import).as_dict()
    if as_json:
        print_json(report)
    else:
        for action, ids in report.items():
            typer.echo(f"{action}: {len(ids)} {' '.join(ids)}".rstrip())


def _reopen(svc: Services, task_id: str, from_stage: str | None) -> None:
    from imageport.records import ImageStatus, TaskStatus, repository
    from imageport.records.reserved import IMPORTING_TO_STORES

    with svc.db.session() as session:
        task = repository.get_task(session, task_id)
        if task.status != TaskStatus.FAILURE:
            raise InvalidRequest(f"only failed tasks can be retried; {task_id} is {task.status}")
        names = task_stage_names(task.input)
        if from_stage is not None and from_stage not in names:
            raise InvalidRequest(f"unknown stage {from_stage!r}; stages: {', '.join(names)}")
        assert task.image_id is not None  # noqa: S101 - import tasks always have an image
        stores = task.input["request"].get("stores") or [svc.settings.default_store]
        repository.set_image_status(
            session, task.image_id, expected=ImageStatus.QUEUED, new=ImageStatus.IMPORTING
        )
        repository.set_property(session, task.image_id, IMPORTING_TO_STORES, ",".join(stores))
        repository.set_task_status(
            session,
            task_id,
            expected=TaskStatus.FAILURE,
            new=TaskStatus.PENDING,
            message=f"retry requested{f' from stage {from_stage}' if from_stage else ''}",
        )
        task.restart_stage = from_stage
        task.attempts = 0
        task.cancel_requested = False
        task.expires_at = None


def task_stage_names(task_input: dict[str, object]) -> list[str]:
    """The stage names of a recorded task input, in order."""
    from imageport.pipeline import ImportRequest, stage_names

    return stage_names(ImportRequest.model_validate(task_input["request"]))
