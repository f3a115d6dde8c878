"""qcow2 to raw written from ``qemu-img map`` in one pass: the same bytes as qemu-img convert.

Every case imports a real qcow2 through the pipeline and compares the stored file, its
``checksum``, ``os_hash_value``, ``size`` and ``virtual_size`` with what ``qemu-img convert -O
raw`` makes of the same file; the convert stage's output says which path wrote it. The
layouts a one-pass reader could get wrong are here: cluster sizes from 512 bytes to 2 MiB, a
virtual size that is not a whole number of clusters, zero clusters, data clusters full of
zeros, host clusters in reverse guest order, compat 0.10, and the cases that must fall back to
qemu-img convert (compressed clusters, a map past its cap). Each layout is imported twice:
written by the conversion stage from the map, and converted early while it was staged
(tests/integration/test_early_convert.py covers the early path's own rules).
"""

from __future__ import annotations

import subprocess

import pytest
from convert_support import import_to_raw

from imageport.pipeline import Services, runner
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.safety import qemu
from imageport.pipeline.stages import conversion
from imageport.records import TaskStatus, repository, serialize
from images import MIB, file_digests, leftover_files, qemu_io_qcow2, raw_reference, stored_path


def _qcow2(path, size, writes, *options):
    return qemu_io_qcow2(path, size, writes, options)


def _reference(path, tmp_path):
    return raw_reference(path, tmp_path / "reference.raw")


def _import(services, src):
    return import_to_raw(services, src, "mapped")


CASES = {
    "contiguous data and holes": (64 * MIB, ["write -P 0x55 0 3M", "write -P 0xaa 40M 5M"], ()),
    "512-byte clusters": (
        8 * MIB,
        ["write -P 1 0 100k", "write -P 2 3M 1537k"],
        ("cluster_size=512",),
    ),
    "2 MiB clusters": (32 * MIB, ["write -P 3 1M 3M", "write -P 4 20M 64k"], ("cluster_size=2M",)),
    "virtual size not a whole cluster": (
        10 * MIB + 512,
        ["write -P 8 0 64k", "write -P 9 10M 512"],
        (),
    ),
    "zero clusters and zero-filled data": (
        16 * MIB,
        ["write -P 1 0 4M", "write -z 1M 1M", "write -P 0 6M 2M", "write -P 2 9M 1M"],
        (),
    ),
    "host order reversed": (
        16 * MIB,
        [f"write -P {i} {i}M 512k" for i in range(15, 0, -1)],
        (),
    ),
    "compat 0.10": (8 * MIB, ["write -P 4 1M 2M"], ("compat=0.10",)),
    "empty": (8 * MIB, [], ()),
}


@pytest.fixture
def late_services(settings):
    """Services whose stage step converts nothing early: the conversion stage does it all."""
    opened = Services.from_settings(settings.model_copy(update={"early_conversion": False}))
    opened.db.upgrade()
    yield opened
    opened.close()


@pytest.mark.parametrize("converted", ["early", "late"])
@pytest.mark.parametrize("name", CASES)
def test_mapped_output_is_qemu_img_converts(name, converted, request, settings, tmp_path):
    services = request.getfixturevalue("services" if converted == "early" else "late_services")
    size, writes, options = CASES[name]
    src = _qcow2(tmp_path / "disk.qcow2", size, writes, *options)
    reference = _reference(src, tmp_path)

    image, outputs = _import(services, src)

    assert outputs["convert"]["mapped"] is True
    assert outputs["convert"]["early"] is (converted == "early")
    stored = stored_path(image["locations"][0]["url"])
    assert stored.read_bytes() == reference.read_bytes()
    md5, sha512 = file_digests(reference)
    assert (image["checksum"], image["os_hash_value"]) == (md5, sha512)
    assert image["size"] == image["virtual_size"] == reference.stat().st_size == size
    # Holes stay holes: the stored file allocates no more than qemu-img's own output.
    assert stored.stat().st_blocks <= reference.stat().st_blocks + 2 * 128
    # The source was not hashed: nobody declared a digest and it is not what is stored.
    assert outputs["stage"]["md5"] is None
    assert leftover_files(settings.resolved_scratch_dir) == []


def test_compressed_clusters_go_through_qemu_img_convert(services, tmp_path):
    plain = _qcow2(
        tmp_path / "plain.qcow2", 16 * MIB, ["write -P 0x31 0 2M", "write -P 0x32 8M 1M"]
    )
    src = tmp_path / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-c", "-f", "qcow2", "-O", "qcow2", str(plain), str(src)],
        check=True,
    )
    reference = _reference(src, tmp_path)

    image, outputs = _import(services, src)

    assert outputs["convert"]["mapped"] is False
    assert outputs["convert"]["md5"] is None  # hashed by the copy stage instead
    assert image["checksum"] == file_digests(reference)[0]
    assert stored_path(image["locations"][0]["url"]).read_bytes() == reference.read_bytes()


def test_a_map_past_its_cap_goes_through_qemu_img_convert(services, tmp_path, monkeypatch):
    # Every other 64 KiB cluster written: one map line per cluster.
    writes = [f"write -P 9 {i * 128}k 64k" for i in range(64)]
    src = _qcow2(tmp_path / "disk.qcow2", 8 * MIB, writes)
    monkeypatch.setattr(qemu, "MAP_OUTPUT_LIMIT", 2048)
    reference = _reference(src, tmp_path)

    image, outputs = _import(services, src)

    assert outputs["convert"]["mapped"] is False
    assert image["checksum"] == file_digests(reference)[0]


def test_a_declared_checksum_is_still_verified(services, tmp_path):
    src = _qcow2(tmp_path / "disk.qcow2", 8 * MIB, ["write -P 3 0 1M"])
    md5, _ = file_digests(src)
    request = ImportRequest(
        method="local-file",
        source=str(src),
        disk_format="qcow2",
        target_format="raw",
        checksum="0" * 32,
    )
    submitted = submit_import(services, request, name="declared")
    assert runner.run_import(services, submitted.task_id).status == TaskStatus.FAILURE
    with services.db.session() as session:
        assert repository.get_task(session, submitted.task_id).error_code == "checksum_mismatch"

    request = request.model_copy(update={"checksum": md5})
    submitted = submit_import(services, request, name="declared")
    assert runner.run_import(services, submitted.task_id).status == TaskStatus.SUCCESS


def test_a_dynamic_vhd_is_written_from_its_map_too(services, tmp_path):
    plain = _qcow2(tmp_path / "plain.qcow2", 16 * MIB, ["write -P 0x41 1M 3M", "write -P 2 12M 1M"])
    src = tmp_path / "disk.vhd"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "vpc", str(plain), str(src)], check=True
    )
    reference = tmp_path / "reference.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(src), str(reference)], check=True
    )
    request = ImportRequest(
        method="local-file", source=str(src), disk_format="vhd", target_format="raw"
    )
    submitted = submit_import(services, request, name="vhd")
    assert runner.run_import(services, submitted.task_id).status == TaskStatus.SUCCESS
    with services.db.session() as session:
        image = serialize.image_to_dict(
            repository.get_image(session, submitted.image_id), admin=True
        )
        runs = {r.stage: r.output for r in repository.stage_runs(session, submitted.task_id)}
    assert runs["convert"]["mapped"] is True
    assert stored_path(image["locations"][0]["url"]).read_bytes() == reference.read_bytes()
    assert image["checksum"] == file_digests(reference)[0]


def test_space_admission_counts_what_the_map_says_is_written(late_services, tmp_path, monkeypatch):
    asked = []
    real_admit = conversion.space.admit

    def admit(where, size, settings, step):
        asked.append((step, size))
        return real_admit(where, size, settings, step)

    monkeypatch.setattr(conversion.space, "admit", admit)
    src = _qcow2(tmp_path / "disk.qcow2", 256 * MIB, ["write -P 1 0 1M", "write -P 2 200M 2M"])

    _, outputs = _import(late_services, src)

    # 3 MiB of data ranges, not the 256 MiB a qemu-img convert output may take.
    assert ("convert", 3 * MIB) in asked
    assert outputs["convert"]["mapped"] is True
