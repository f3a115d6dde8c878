"""A cancel or a worker shutdown stops qemu-img in the middle of a conversion.

The source is a qcow2 whose every cluster is allocated and compressed (zstd, 2 MiB clusters,
zero bytes): a few MiB on disk that qemu-img must read and decompress cluster by cluster, so a
conversion to raw takes many seconds while its output stays sparse (the zeros are not written).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor

import psutil
import pytest

from imageport.pipeline import runner
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.records import ImageStatus, StageStatus, TaskStatus, repository
from images import leftover_files

GIB = 1024**3
CLUSTER = 2 * 1024**2
#: Virtual size of the source: about 15 s of conversion on an idle two-core machine.
VIRTUAL = 24 * GIB
START_TIMEOUT = 30.0  # seconds for stage and inspect to finish and qemu-img convert to start
STOP_TIMEOUT = 8.0  # seconds a running job has to notice the stop (heartbeat: 2 s) and end


@pytest.fixture(scope="module")
def slow_qcow2(tmp_path_factory):
    """A small qcow2 file whose conversion to raw takes many seconds."""
    path = tmp_path_factory.mktemp("slow") / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o",
         f"compression_type=zstd,cluster_size={CLUSTER}", str(path), str(VIRTUAL)],
        check=True,
    )  # fmt: skip
    # One compressed write per cluster: qemu-io allocates one small buffer per command.
    commands = "".join(f"write -c -P 0 {off} {CLUSTER}\n" for off in range(0, VIRTUAL, CLUSTER))
    subprocess.run(
        ["qemu-io", "-f", "qcow2", str(path)],
        input=commands.encode(),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    assert path.stat().st_size < 64 * 1024**2
    return path


def _convert_processes(task_id: str) -> list[psutil.Process]:
    """The qemu-img convert processes of this task (matched by the task id in their paths)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        qemu = any(a.endswith("qemu-img") for a in args) and "convert" in args
        if qemu and any(task_id in a for a in args):
            found.append(proc)
    return found


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            continue
    return alive


def _convert_run(services, task_id):
    with services.db.session() as session:
        run = repository.latest_stage_runs(session, task_id).get("convert")
        if run is None:
            return None
        session.expunge(run)
        return run


def _task(services, task_id):
    with services.db.session() as session:
        task = repository.get_task(session, task_id)
        session.expunge(task)
        return task


def _image_status(services, image_id):
    with services.db.session() as session:
        return ImageStatus(repository.get_image(session, image_id).status)


def _start_conversion(services, source, pool) -> tuple[str, str, Future, list[psutil.Process]]:
    """Submit a qcow2 to raw import, run it in a thread, return once qemu-img converts."""
    request = ImportRequest(
        method="local-file", source=str(source), disk_format="qcow2", target_format="raw"
    )
    submitted = submit_import(services, request, name="slow")
    task_id = submitted.task_id
    running = pool.submit(runner.run_import, services, task_id)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if running.done():
            task = _task(services, task_id)
            pytest.fail(
                f"the import ended before its conversion could be stopped: "
                f"{running.result()} {task.status} {task.error_code} {task.message}"
            )
        run = _convert_run(services, task_id)
        procs = _convert_processes(task_id)
        if run is not None and run.status == StageStatus.RUNNING and procs:
            time.sleep(0.5)  # well inside the conversion, not at its first byte
            assert not running.done(), "the conversion finished before it could be stopped"
            return submitted.image_id, task_id, running, procs
        time.sleep(0.05)
    pytest.fail(f"qemu-img convert did not start within {START_TIMEOUT:.0f}s")


def _stopped(running: Future, task_id: str, procs: list[psutil.Process]):
    """Wait for the job to end after a stop; return its outcome and how long it took."""
    asked = time.monotonic()
    outcome = running.result(timeout=STOP_TIMEOUT)
    took = time.monotonic() - asked
    survivors = _alive(procs) + _alive(_convert_processes(task_id))
    assert not survivors, f"qemu-img survived the stop: {[p.pid for p in survivors]}"
    return outcome, took


@pytest.fixture
def pool(services):
    """One thread for the job; a job still running at teardown is shut down, its qemu-img
    processes (started by this test) killed by pid."""
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield executor
        services.shutdown_at = time.monotonic()
        for proc in psutil.process_iter(["cmdline"]):
            args = proc.info["cmdline"] or []
            if "convert" in args and any(str(services.settings.data_dir) in a for a in args):
                with contextlib.suppress(psutil.Error):
                    proc.kill()


def test_cancel_kills_qemu_img_mid_convert_and_removes_everything(
    services, settings, slow_qcow2, pool
):
    image_id, task_id, running, procs = _start_conversion(services, slow_qcow2, pool)

    with services.db.session() as session:  # what `imageport cancel` does
        repository.get_task(session, task_id).cancel_requested = True
    outcome, took = _stopped(running, task_id, procs)

    assert outcome.status == TaskStatus.FAILURE, outcome
    assert took < STOP_TIMEOUT
    task = _task(services, task_id)
    assert (task.status, task.error_code) == (TaskStatus.FAILURE, "cancelled"), task.message
    run = _convert_run(services, task_id)
    assert (run.status, run.error_code) == (StageStatus.FAILED, "cancelled"), run.error_message
    assert run.bytes_total is not None
    assert run.bytes_done < run.bytes_total  # stopped mid-convert, not after it
    assert leftover_files(settings.resolved_staging_dir) == []
    assert leftover_files(settings.resolved_scratch_dir) == []
    assert _image_status(services, image_id) == ImageStatus.QUEUED


def test_shutdown_kills_qemu_img_mid_convert_and_requeues(services, settings, slow_qcow2, pool):
    image_id, task_id, running, procs = _start_conversion(services, slow_qcow2, pool)

    services.shutdown_at = time.monotonic()  # what the worker's SIGTERM handler does
    outcome, took = _stopped(running, task_id, procs)

    assert (outcome.status, outcome.retry_in) == (TaskStatus.PENDING, 0.0), outcome
    assert took < STOP_TIMEOUT
    task = _task(services, task_id)
    assert task.status == TaskStatus.PENDING, task.message
    run = _convert_run(services, task_id)
    assert (run.status, run.error_code) == (StageStatus.FAILED, "shutdown"), run.error_message
    assert run.bytes_total is not None
    assert run.bytes_done < run.bytes_total  # stopped mid-convert, not after it
    assert _image_status(services, image_id) == ImageStatus.IMPORTING
