"""Every image case of the hostile-input corpus (../shared/corpus) through inspect and import.

The corpus is built once per session into a temporary directory. Each case runs with its
declared format (and the manifest's declared checksums) under the manifest's policy caps and
must reach the manifest's verdict, detected format, virtual size and reason code. Each test
checks all 64 cases and reports every difference at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imageport.config import Settings
from imageport.pipeline import runner
from imageport.pipeline.context import Services
from imageport.pipeline.methods.check import check_file
from imageport.pipeline.methods.submit import submit_import
from imageport.pipeline.request import ImportRequest
from imageport.pipeline.safety.qemu import QemuImg, run_limited
from imageport.records import TaskStatus, repository, serialize
from images import leftover_files

REPO = Path(__file__).resolve().parents[2]
#: In CI and in the workspace the shared directory sits beside the repository.
CORPUS_BUILDER = REPO.parent / "shared" / "corpus" / "build_corpus.py"
#: The manifest names content formats; the Image API (and our verdict) call a GPT disk raw.
_PUBLIC_NAMES = {"gpt": "raw"}
#: Cases that also run through the real CLI in a subprocess (one or two per family).
#: Each run costs a Python start-up (~3 s on the CI's VMs): one case per kind of outcome.
CLI_SAMPLE = (
    "vhd_fixed",
    "gzip_qcow2",
    "qcow2_backing_abs",
    "parallels_declared_raw",
    "zstd_bomb",
    "checksum_mismatch",
)
#: Rejections that only qemu-img's own opinion can reach (the inspector accepts the bytes).
QEMU_LEVEL_REJECTIONS = frozenset({"parallels_declared_raw"})


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    """The corpus directory and its manifest, built once per session."""
    if not CORPUS_BUILDER.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"the corpus builder is required in CI: {CORPUS_BUILDER}")
        pytest.skip(f"corpus builder not found at {CORPUS_BUILDER}")
    out = tmp_path_factory.mktemp("corpus")
    subprocess.run(
        [sys.executable, str(CORPUS_BUILDER), str(out), "--force"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["cases"]) == 64
    return out, manifest


def _policy_settings(manifest: dict, **extra) -> Settings:
    policy = manifest["policy"]
    limits = policy["qemu_img_info_limits"]
    return Settings(
        max_image_bytes=policy["max_upload_bytes"],
        max_decompressed_bytes=policy["max_decompressed_bytes"],
        max_virtual_size=policy["max_virtual_size"],
        allowed_disk_formats=tuple(policy["allowed_disk_formats"]),
        allowed_vmdk_create_types=tuple(policy["vmdk_allowed_create_types"]),
        qemu_address_space_bytes=limits["address_space_bytes"],
        qemu_cpu_seconds=limits["cpu_seconds"],
        **extra,
    )


def _declared_hashes(case: dict) -> tuple[str | None, str | None]:
    given = case.get("declared_checksums") or {}
    sha = given.get("sha512")
    return given.get("md5"), (f"sha512:{sha}" if sha else None)


def _expected(case: dict) -> dict:
    want = case["expected"]
    return {
        "verdict": want["verdict"],
        "detected_format": _PUBLIC_NAMES.get(want["detected_format"], want["detected_format"]),
        "virtual_size": want.get("virtual_size") if want["verdict"] == "accept" else None,
        "reason_code": want.get("reason_code"),
    }


def _differences(results: dict[str, tuple[dict, dict]]) -> list[str]:
    return [
        f"{name}: expected {want}, got {got}"
        for name, (want, got) in results.items()
        if want != got
    ]


def test_every_case_through_check_file(corpus):
    root, manifest = corpus
    settings = _policy_settings(manifest, data_dir=root / "unused")
    qemu = Services.build_qemu(settings)
    results = {}
    for case in manifest["cases"]:
        md5, hash_spec = _declared_hashes(case)
        got = check_file(
            root / case["file"],
            settings,
            qemu,
            disk_format=case["declared"]["disk_format"],
            checksum=md5,
            hash_spec=hash_spec,
        )
        results[case["name"]] = (_expected(case), {k: got[k] for k in _expected(case)})
    wrong = _differences(results)
    assert not wrong, f"{64 - len(wrong)}/64 right:\n" + "\n".join(wrong)


def test_a_sample_through_the_cli(corpus, tmp_path):
    root, manifest = corpus
    policy = manifest["policy"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
    env = {
        **base,
        "IMAGEPORT_DATA_DIR": str(tmp_path / "data"),
        "IMAGEPORT_MAX_IMAGE_BYTES": str(policy["max_upload_bytes"]),
        "IMAGEPORT_MAX_DECOMPRESSED_BYTES": str(policy["max_decompressed_bytes"]),
        "IMAGEPORT_MAX_VIRTUAL_SIZE": str(policy["max_virtual_size"]),
    }
    cases = {c["name"]: c for c in manifest["cases"]}
    results = {}
    for name in CLI_SAMPLE:
        case = cases[name]
        md5, hash_spec = _declared_hashes(case)
        args = ["inspect", str(root / case["file"]), "--disk-format"]
        args += [case["declared"]["disk_format"], "--json"]
        args += ["--checksum", md5] if md5 else []
        args += ["--hash", hash_spec] if hash_spec else []
        proc = subprocess.run(
            [sys.executable, "-m", "imageport", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        got = json.loads(proc.stdout)
        assert proc.returncode == (0 if got["verdict"] == "accept" else 1), proc.stderr
        results[name] = (_expected(case), {k: got[k] for k in _expected(case)})
    assert not _differences(results), "\n".join(_differences(results))


@pytest.fixture
def sqlite_services(corpus, tmp_path):
    """Services on SQLite only (the corpus adds nothing to the database contract tests)."""
    _, manifest = corpus
    settings = _policy_settings(
        manifest,
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path}/imageport.db",
        max_attempts=1,
        progress_interval_seconds=10.0,
    )
    services = Services.from_settings(settings)
    services.db.upgrade()
    yield services
    services.close()


def _import(services: Services, path: Path, case: dict) -> tuple[str, str, TaskStatus]:
    md5, hash_spec = _declared_hashes(case)
    request = ImportRequest.with_hash(
        hash_spec,
        method="local-file",
        source=str(path),
        disk_format=case["declared"]["disk_format"],
        container_format=case["declared"]["container_format"],
        checksum=md5,
    )
    submitted = submit_import(services, request, name=case["name"])
    outcome = runner.run_import(services, submitted.task_id)
    return submitted.image_id, submitted.task_id, outcome.status


def _nothing_left(settings: Settings) -> list[Path]:
    return (
        leftover_files(settings.resolved_staging_dir)
        + leftover_files(settings.resolved_scratch_dir)
        + leftover_files(settings.data_dir / "images")
    )


def test_every_case_through_a_full_import(corpus, sqlite_services):
    root, manifest = corpus
    services = sqlite_services
    results = {}
    for case in manifest["cases"]:
        image_id, task_id, status = _import(services, root / case["file"], case)
        with services.db.session() as session:
            image = serialize.image_to_dict(repository.get_image(session, image_id), admin=True)
            task = repository.get_task(session, task_id)
            error_code = task.error_code
        want = _expected(case)
        got = {
            "verdict": "accept" if status == TaskStatus.SUCCESS else "reject",
            "virtual_size": image["virtual_size"],
            "reason_code": error_code,
        }
        if status == TaskStatus.SUCCESS:
            got["detected_format"] = image["disk_format"]
            left = []
            for location in image["locations"]:  # accepted: remove it, so the store is empty
                services.stores[location["metadata"]["store"]].delete(location["url"])
        else:
            got["detected_format"] = want["detected_format"]  # only check_file reports it
            got["status"] = image["status"]
            want = {**want, "status": "queued"}
            left = _nothing_left(services.settings)
        if left:
            got["left_behind"] = [str(p) for p in left]
        results[case["name"]] = (want, got)
    wrong = _differences(results)
    assert not wrong, f"{64 - len(wrong)}/64 right:\n" + "\n".join(wrong)


class _RecordingRunner:
    """A qemu-img runner that records every call and then really runs it."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, args, limits, progress):
        self.calls.append(list(args))
        return run_limited(args, limits, progress)


def test_qemu_img_never_runs_on_a_file_the_inspector_refused(corpus, sqlite_services):
    root, manifest = corpus
    services = sqlite_services
    recorder = _RecordingRunner()
    settings = services.settings
    services.qemu = QemuImg(
        binary=settings.qemu_img_path,
        info_limits=Services.build_qemu(settings)._info_limits,
        convert_timeout=settings.qemu_timeout_seconds,
        runner=recorder,
    )
    refused = [
        c
        for c in manifest["cases"]
        if c["expected"]["verdict"] == "reject" and c["name"] not in QEMU_LEVEL_REJECTIONS
    ]
    assert len(refused) == 42
    for case in refused:
        _, _, status = _import(services, root / case["file"], case)
        assert status == TaskStatus.FAILURE, case["name"]
    assert recorder.calls == []
    # The recorder does see qemu-img for an accepted image: the test would notice a bypass.
    accepted = next(c for c in manifest["cases"] if c["name"] == "qcow2_v3")
    _import(services, root / accepted["file"], accepted)
    assert recorder.calls
