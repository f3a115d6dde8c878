"""A local qcow2 imported to raw through the real pipeline, for the conversion tests."""

from __future__ import annotations

from pathlib import Path

from imageport.pipeline import Services, runner
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.records import TaskStatus, repository, serialize


def import_to_raw(services: Services, src: Path, name: str) -> tuple[dict, dict]:
    """Import ``src`` (qcow2) as raw; the image as the API shows it and each stage's output."""
    request = ImportRequest(
        method="local-file", source=str(src), disk_format="qcow2", target_format="raw"
    )
    submitted = submit_import(services, request, name=name)
    outcome = runner.run_import(services, submitted.task_id)
    assert outcome.status == TaskStatus.SUCCESS, outcome
    with services.db.session() as session:
        image = serialize.image_to_dict(
            repository.get_image(session, submitted.image_id), admin=True
        )
        runs = repository.stage_runs(session, submitted.task_id)
        outputs = {r.stage: r.output for r in runs}
    return image, outputs
