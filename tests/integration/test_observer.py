"""What a job reports to its observer, and that only worker processes register metrics."""

from __future__ import annotations

import subprocess
import sys

from imageport.pipeline import runner
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.stages import STAGE_NAMES
from images import make_qcow2


class Recorder:
    """A JobObserver that remembers every call."""

    def __init__(self):
        self.calls = []

    def job_started(self):
        self.calls.append(("job_started",))

    def job_ended(self):
        self.calls.append(("job_ended",))

    def import_finished(self, outcome, code):
        self.calls.append(("import_finished", outcome, code))

    def stage_finished(self, stage, seconds, bytes_done):
        assert seconds >= 0
        self.calls.append(("stage_finished", stage, bytes_done > 0))

    def retry_scheduled(self):
        self.calls.append(("retry_scheduled",))

    def lease_taken_over(self):
        self.calls.append(("lease_taken_over",))

    def reaped(self, action, count):
        self.calls.append(("reaped", action, count))


def test_a_successful_import_reports_its_stages_and_outcome(services, tmp_path):
    recorder = Recorder()
    services.observer = recorder
    src = make_qcow2(tmp_path / "disk.qcow2")
    request = ImportRequest(
        method="local-file", source=str(src), disk_format="qcow2", target_format="raw"
    )
    submitted = submit_import(services, request)
    assert runner.run_import(services, submitted.task_id).status == "success"
    stages = [c[1] for c in recorder.calls if c[0] == "stage_finished"]
    assert stages == list(STAGE_NAMES)
    assert ("stage_finished", "stage", True) in recorder.calls  # bytes were counted
    assert recorder.calls[0] == ("job_started",)
    assert ("import_finished", "success", "") in recorder.calls
    assert recorder.calls[-1] == ("job_ended",)


def test_a_failed_import_reports_its_error_code(services, tmp_path):
    recorder = Recorder()
    services.observer = recorder
    src = make_qcow2(tmp_path / "disk.qcow2")
    request = ImportRequest(method="local-file", source=str(src), disk_format="raw")
    submitted = submit_import(services, request)
    assert runner.run_import(services, submitted.task_id).status == "failure"
    assert ("import_finished", "failure", "format_mismatch") in recorder.calls
    assert ("job_ended",) in recorder.calls


def test_the_api_and_cli_register_no_worker_metrics():
    code = (
        "import imageport.api.app, imageport.cli.main\n"
        "from prometheus_client import REGISTRY\n"
        "names = [n for n in REGISTRY._names_to_collectors if n.startswith('imageport')]\n"
        "print(','.join(names))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
