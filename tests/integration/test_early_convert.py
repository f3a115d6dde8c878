"""The early conversion: a qcow2 converted to raw while it is staged, adopted only when proven.

The follower reads a real staged file as a stage writer fills it, and its output must be
byte for byte ``qemu-img convert -O raw``'s, with the same MD5 and SHA-512. The conversion
stage adopts it only when ``qemu-img map`` of the inspected file has the same layout and the
staged file is the one followed: a tampered record, a touched staged file or a follower that
gave up all end in the ordinary conversion, with the same image and no file left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from convert_support import import_to_raw

from imageport.pipeline import runner
from imageport.pipeline.data import early
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.stages import conversion
from imageport.records import TaskStatus, repository
from images import MIB, file_digests, leftover_files, make_qcow2, raw_reference, stored_path


def _reference(src, tmp_path):
    return raw_reference(src, tmp_path / "reference.raw")


def _follow(src, staged, *, chunk=MIB, stop_before=None):
    """Copy ``src`` into ``staged`` chunk by chunk as a stage writer does, telling a follower."""
    follower = early.start(
        staged,
        disk_format="qcow2",
        target_format="raw",
        expected_size=src.stat().st_size,
        algo="sha512",
        chunk_size=4 * MIB,
        max_virtual=1 << 40,
    )
    assert follower is not None
    data = src.read_bytes()
    with staged.open("r+b") as handle:
        for at in range(0, len(data), chunk):
            if stop_before is not None and at >= stop_before:
                return follower
            handle.write(data[at : at + chunk])
            handle.flush()
            follower.advance(at + len(data[at : at + chunk]))
    follower.complete(len(data))
    return follower


def _staged(tmp_path):
    folder = tmp_path / "staging"
    folder.mkdir()
    staged = folder / "source"
    staged.touch()
    return staged


def test_the_follower_writes_qemu_img_converts_output_while_the_file_arrives(tmp_path):
    src = make_qcow2(tmp_path / "disk.qcow2", virtual=96 * MIB, data=12 * MIB)
    reference = _reference(src, tmp_path)
    staged = _staged(tmp_path)

    # Everything but the last MiB: the follower gets going before the file is complete.
    follower = _follow(src, staged, stop_before=src.stat().st_size - MIB)
    deadline = time.monotonic() + 30
    while not (follower.partial.exists() and follower.partial.stat().st_blocks > 0):
        assert time.monotonic() < deadline, "the follower wrote nothing before the end"
        time.sleep(0.01)
    with staged.open("r+b") as handle:
        handle.seek(src.stat().st_size - MIB)
        handle.write(src.read_bytes()[-MIB:])
    follower.advance(src.stat().st_size)
    follower.complete(src.stat().st_size)
    result = follower.result()

    assert result is not None
    md5, sha512 = file_digests(reference)
    assert (result.md5, result.value, result.size) == (md5, sha512, 96 * MIB)
    assert follower.output.read_bytes() == reference.read_bytes()
    assert result.staged == early.identity(staged)
    found = early.collect(staged)
    assert found is not None
    assert found[0] == result


def test_a_failed_staging_leaves_no_early_file(tmp_path):
    src = make_qcow2(tmp_path / "disk.qcow2", virtual=64 * MIB, data=8 * MIB)
    staged = _staged(tmp_path)
    follower = _follow(src, staged, stop_before=2 * MIB)

    early.stop(staged)

    assert follower.result() is None
    assert sorted(p.name for p in staged.parent.iterdir()) == ["source"]
    assert early.collect(staged) is None


def test_a_job_waiting_for_its_follower_reports_progress_and_can_stop_it(tmp_path):
    src = make_qcow2(tmp_path / "disk.qcow2", virtual=64 * MIB, data=8 * MIB)
    staged = _staged(tmp_path)
    follower = _follow(src, staged, stop_before=MIB)  # never completes by itself
    ticks = []

    class Cancelled(BaseException):
        pass

    def tick(done):
        ticks.append(done)
        if len(ticks) == 2:
            raise Cancelled  # what a cancel does to the job: JobInterrupted from progress

    with pytest.raises(Cancelled):
        early.wait(staged, tick)

    assert follower.result() is None  # stopped, not left running
    assert sorted(p.name for p in staged.parent.iterdir()) == ["source"]


def test_a_replaced_follower_leaves_no_record(tmp_path):
    src = make_qcow2(tmp_path / "disk.qcow2", virtual=32 * MIB, data=4 * MIB, seed=1)
    other = make_qcow2(tmp_path / "other.qcow2", virtual=32 * MIB, data=4 * MIB, seed=2)
    staged = _staged(tmp_path)
    first = _follow(src, staged, stop_before=MIB)

    staged.write_bytes(b"")  # a new upload of the same image starts over
    second = _follow(other, staged)

    assert first.result() is None
    result = second.result()
    assert result is not None
    assert result.md5 == file_digests(_reference(other, tmp_path))[0]
    assert json.loads(second.record.read_text())["md5"] == result.md5


def test_a_layout_it_does_not_follow_leaves_nothing(tmp_path):
    plain = make_qcow2(tmp_path / "plain.qcow2", virtual=16 * MIB, data=2 * MIB)
    src = tmp_path / "compressed.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-c", "-f", "qcow2", "-O", "qcow2", str(plain), str(src)],
        check=True,
    )
    staged = _staged(tmp_path)

    assert _follow(src, staged).result() is None
    assert sorted(p.name for p in staged.parent.iterdir()) == ["source"]


def _import(services, src):
    return import_to_raw(services, src, "early")


def _check(image, reference):
    md5, sha512 = file_digests(reference)
    assert (image["checksum"], image["os_hash_value"]) == (md5, sha512)
    assert image["size"] == image["virtual_size"] == reference.stat().st_size
    assert stored_path(image["locations"][0]["url"]).read_bytes() == reference.read_bytes()


def test_an_import_adopts_the_early_output(services, settings, tmp_path):
    src = make_qcow2(tmp_path / "disk.qcow2", virtual=64 * MIB, data=10 * MIB)

    image, outputs = _import(services, src)

    assert outputs["convert"]["early"] is True
    assert outputs["convert"]["md5"] == image["checksum"]
    _check(image, _reference(src, tmp_path))
    assert leftover_files(settings.resolved_scratch_dir) == []


def _tampering(monkeypatch, how):
    """Change the follower's record or the staged file just before the stage reads them."""
    real_collect = early.collect

    def collect(staged, tick=None):
        early.wait(staged, tick)
        record = staged.with_name(early.RECORD_NAME)
        if how == "layout":
            fields = json.loads(record.read_text())
            fields["layout"] = "0" * 64
            record.write_text(json.dumps(fields))
        elif how == "staged file":
            stat = staged.stat()
            os.utime(staged, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
        elif how == "digest algorithm":
            fields = json.loads(record.read_text())
            fields["algo"] = "sha256"
            record.write_text(json.dumps(fields))
        return real_collect(staged, tick)

    monkeypatch.setattr(conversion.early, "collect", collect)


def test_an_early_output_that_does_not_match_is_not_adopted(
    services, settings, tmp_path, monkeypatch
):
    src = make_qcow2(tmp_path / "disk.qcow2", virtual=48 * MIB, data=6 * MIB)
    reference = _reference(src, tmp_path)
    for how in ("layout", "staged file", "digest algorithm"):
        _tampering(monkeypatch, how)

        image, outputs = _import(services, src)

        assert outputs["convert"]["early"] is False, how
        assert outputs["convert"]["mapped"] is True, how
        _check(image, reference)
        # Neither the record nor the output is left in the task's directory.
        assert leftover_files(settings.resolved_staging_dir) == [], how
        assert leftover_files(settings.resolved_scratch_dir) == [], how


def test_an_image_the_inspector_refuses_fails_as_before(services, settings, tmp_path):
    base = make_qcow2(tmp_path / "base.qcow2", virtual=16 * MIB, data=2 * MIB)
    src = tmp_path / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(src)],
        check=True,
    )
    request = ImportRequest(
        method="local-file", source=str(src), disk_format="qcow2", target_format="raw"
    )
    submitted = submit_import(services, request, name="backing")

    assert runner.run_import(services, submitted.task_id).status == TaskStatus.FAILURE
    with services.db.session() as session:
        assert repository.get_task(session, submitted.task_id).error_code != "internal_error"
    assert list(settings.resolved_staging_dir.rglob("early.*")) == []
