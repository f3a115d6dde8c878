"""A bug in a stage ends the import in a recorded state, without leaking the exception."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError
from structlog.testing import capture_logs

from imageport.pipeline import runner
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.stages import verification
from imageport.records import repository
from images import leftover_files, make_raw


def _import_raw(services, tmp_path):
    """Submit and run the import of a small raw file; the submission, outcome and logs."""
    src = make_raw(tmp_path / "disk.raw")
    submitted = submit_import(
        services, ImportRequest(method="local-file", source=str(src), disk_format="raw")
    )
    with capture_logs() as logs:
        outcome = runner.run_import(services, submitted.task_id)
    return submitted, outcome, logs


def _boom(self, ctx, services):
    raise RuntimeError("secret detail from deep inside")


def test_a_crashing_stage_fails_the_import_with_a_reference(services, tmp_path, monkeypatch):
    monkeypatch.setattr(verification.Verification, "run", _boom)
    submitted, outcome, logs = _import_raw(services, tmp_path)
    assert outcome.status == "failure"
    with services.db.session() as session:
        task = repository.get_task(session, submitted.task_id)
        runs = {r.stage: r for r in repository.stage_runs(session, submitted.task_id)}
        message, code = task.message, task.error_code
        run_code, run_message = runs["verify"].error_code, runs["verify"].error_message
        image_status = repository.get_image(session, submitted.image_id).status
    assert (code, run_code) == ("internal_error", "internal_error")
    for text in (message, run_message):
        assert "secret detail" not in text
        assert "RuntimeError" not in text
        assert "reference" in text
    crashed = [e for e in logs if e["event"] == "stage crashed"]
    assert crashed
    assert crashed[0]["reference"] in message
    assert image_status == "queued"
    assert leftover_files(services.settings.resolved_staging_dir) == []


def test_a_database_lost_after_the_last_stage_committed_still_ends_in_success(
    services, tmp_path, monkeypatch
):
    # The activation committed the image and the task; the database goes away before the
    # stage's run row is recorded. The job is done: it reports success, not a failure.
    real_finish = runner._finish

    def finish(ctx, writer, status, output, error, *, following=None):
        if following is None and error is None:
            raise OperationalError("UPDATE stage_runs", {}, ConnectionRefusedError("gone"))
        return real_finish(ctx, writer, status, output, error, following=following)

    monkeypatch.setattr(runner, "_finish", finish)
    submitted, outcome, logs = _import_raw(services, tmp_path)
    assert outcome.status == "success"
    summary = [e for e in logs if e["event"] == "job summary"]
    assert [e["outcome"] for e in summary] == ["success"]
    assert any(e["event"] == "could not record the last stage's run; the job is done" for e in logs)
    with services.db.session() as session:
        assert repository.get_task(session, submitted.task_id).status == "success"
        assert repository.get_image(session, submitted.image_id).status == "active"
