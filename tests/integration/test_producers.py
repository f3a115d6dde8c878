"""The producer matrix: disk images as VMware, VirtualBox, Hyper-V and builders write them.

Every case is built the way its producer lays the bytes out (:mod:`producers`,
:mod:`producers_disks`) and goes through ``check_file`` (what ``imageport inspect`` runs) and a
real import converted to raw. An accepted case must come out with the expected format and
virtual size, and its converted bytes must equal ``qemu-img convert -f FMT -O raw`` of the
same file; a refused one must name the expected reason code and the rule that refused it, and
leave nothing behind. ``why`` says why the verdict is right; ``oslo`` records what oslo.utils'
format_inspector alone concludes (checked too), and ``why`` explains every case where imageport
is stricter or looser than it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from oslo_utils.imageutils import format_inspector

import producers as vm
import producers_disks as disks
from imageport.config import Settings
from imageport.pipeline import runner
from imageport.pipeline.context import Services
from imageport.pipeline.methods.check import check_file
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.safety.qemu import qemu_format
from imageport.records import TaskStatus, repository, serialize
from images import MIB, leftover_files, stored_path
from producer_cases import CASES, FILE_LENGTH, Case

ACCEPTED = [c for c in CASES if c.verdict == "accept"]


def _params(cases: list[Case]) -> list:
    return [
        pytest.param(
            c,
            id=c.name,
            marks=[pytest.mark.skipif(not disks.has_tool(c.needs), reason=f"no {c.needs}")]
            if c.needs
            else [],
        )
        for c in cases
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Callable[[Case], Path]:
    """Build a case's image once per module (each in its own directory)."""
    root = tmp_path_factory.mktemp("producers")
    source = vm.payload(root)

    @functools.cache
    def build(case: Case) -> Path:
        workdir = root / case.name
        workdir.mkdir()
        return case.build(workdir, source)

    return build


@pytest.fixture(scope="module")
def matrix_services(tmp_path_factory):
    """Services on SQLite: the matrix adds nothing to the database contract tests.

    The two classes of issue #15 also run on both databases (the ``services`` fixture).
    """
    root = tmp_path_factory.mktemp("producer-services")
    settings = Settings(
        data_dir=root / "data",
        database_url=f"sqlite:///{root}/imageport.db",
        max_attempts=1,
        progress_interval_seconds=10.0,
    )
    opened = Services.from_settings(settings)
    opened.db.upgrade()
    yield opened
    opened.close()


def test_every_producer_in_the_list_has_a_reason():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    assert all(len(c.why) > 30 for c in CASES)
    assert all(c.verdict in ("accept", "reject") and c.oslo in ("accept", "reject") for c in CASES)


@pytest.mark.parametrize("case", _params(CASES))
def test_inspect_gives_the_expected_verdict(case, built, matrix_services):
    settings, qemu = matrix_services.settings, matrix_services.qemu
    got = check_file(built(case), settings, qemu, disk_format=case.declared)

    assert (got["verdict"], got["detected_format"]) == (case.verdict, case.detected), got
    if case.verdict == "accept":
        assert got["virtual_size"] == _size(case, built(case)), got
        assert _qemu_virtual_size(built(case), case.detected) == got["virtual_size"]
    else:
        assert got["reason_code"] == case.expect, got
        assert "(rule " in got["message"], got["message"]  # which rule, which field


@pytest.mark.parametrize("case", _params(CASES))
def test_oslo_alone_concludes_what_the_case_records(case, built):
    assert _oslo_verdict(built(case), case.declared) == case.oslo


@pytest.mark.parametrize("case", _params(ACCEPTED))
def test_import_converts_to_raw_exactly_as_qemu_img_does(case, built, matrix_services, tmp_path):
    path = built(case)
    image, task = _import(matrix_services, path, case.declared)

    assert task["status"] == "success", task
    assert (image["disk_format"], image["virtual_size"]) == ("raw", _size(case, path))
    [location] = image["locations"]
    stored = stored_path(location["url"])
    reference = tmp_path / "reference.raw"
    vm.qemu_img("convert", "-f", qemu_format(case.detected), "-O", "raw", path, reference)
    assert _sha256(stored) == _sha256(reference)
    matrix_services.stores[location["metadata"]["store"]].delete(location["url"])


@pytest.mark.parametrize("case", _params([c for c in CASES if c.verdict == "reject"]))
def test_import_of_a_refused_image_fails_with_its_code_and_leaves_nothing(
    case, built, matrix_services
):
    image, task = _import(matrix_services, built(case), case.declared)

    assert (task["status"], task["error_code"]) == ("failure", case.expect), task
    assert "(rule " in task["message"], task["message"]
    assert image["status"] == "queued"
    settings = matrix_services.settings
    for root in (settings.resolved_staging_dir, settings.resolved_scratch_dir):
        assert leftover_files(root) == []


@pytest.mark.parametrize(
    "name", ["vmware_monolithic_sparse_renamed", "vmware_stream_optimized_footer"]
)
def test_the_two_classes_of_issue_15_import_on_both_databases(name, built, services, tmp_path):
    [case] = [c for c in CASES if c.name == name]
    image, task = _import(services, built(case), case.declared)

    assert task["status"] == "success", task
    assert (image["status"], image["disk_format"], image["virtual_size"]) == (
        "active",
        "raw",
        vm.SIZE,
    )
    reference = tmp_path / "reference.raw"
    vm.qemu_img("convert", "-f", "vmdk", "-O", "raw", built(case), reference)
    assert _sha256(stored_path(image["locations"][0]["url"])) == _sha256(reference)


def _import(services: Services, path: Path, declared: str) -> tuple[dict, dict]:
    request = ImportRequest(
        method="local-file", source=str(path), disk_format=declared, target_format="raw"
    )
    submitted = submit_import(services, request, name=path.name)
    outcome = runner.run_import(services, submitted.task_id)
    with services.db.session() as session:
        image = repository.get_image(session, submitted.image_id)
        task = repository.get_task(session, submitted.task_id)
        status = {TaskStatus.SUCCESS: "success", TaskStatus.FAILURE: "failure"}
        done = {
            "status": status.get(outcome.status, str(outcome.status)),
            "error_code": task.error_code,
            "message": task.message,
        }
        return serialize.image_to_dict(image, admin=True), done


def _size(case: Case, path: Path) -> int:
    return path.stat().st_size if case.expect == FILE_LENGTH else int(case.expect)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()


def _qemu_virtual_size(path: Path, fmt: str) -> int:
    out = subprocess.run(
        ["qemu-img", "info", "-f", qemu_format(fmt), "--output=json", str(path)],
        check=True,
        capture_output=True,
    ).stdout
    return int(json.loads(out)["virtual-size"])


def _oslo_verdict(path: Path, declared: str) -> str:
    """oslo.utils alone, the way Glance uses it: one format (iso+gpt is iso), safety checks."""
    with path.open("rb") as f:
        wrapper = format_inspector.InspectWrapper(f)
        while wrapper.read(64 * 1024):
            pass
        wrapper.close()
    found = {i.NAME: i for i in wrapper.formats or []}
    if set(found) == {"iso", "gpt"}:
        found.pop("gpt")
    if len(found) != 1:
        return "reject"
    [(name, inspector)] = found.items()
    if {"gpt": "raw"}.get(name, name) != declared:
        return "reject"
    try:
        inspector.safety_check()
    except (format_inspector.SafetyCheckFailed, format_inspector.ImageFormatError):
        return "reject"
    return "accept"
