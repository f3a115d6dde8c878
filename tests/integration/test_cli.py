"""The ``imageport`` command as a user runs it: a subprocess, embedded mode, real qemu-img."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from images import MIB, file_digests, make_qcow2, qemu_info, stored_path

IMAGEPORT = [sys.executable, "-m", "imageport"]


def _run(args, env, check=True):
    proc = subprocess.run(
        [*IMAGEPORT, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if check and proc.returncode != 0:
        pytest.fail(f"imageport {args} exited {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture
def env(tmp_path, database_url):
    base = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEPORT_")}
    return {
        **base,
        "IMAGEPORT_DATA_DIR": str(tmp_path / "data"),
        "IMAGEPORT_DATABASE_URL": database_url,
        "IMAGEPORT_MAX_ATTEMPTS": "1",
    }


def test_import_json_prints_only_the_active_image(env, tmp_path):
    src = make_qcow2(tmp_path / "disk.qcow2", virtual=32 * MIB, data=4 * MIB)
    proc = _run(["import", str(src), "--name", "disk", "--target-format", "raw", "--json"], env)

    image = json.loads(proc.stdout)
    assert image["status"] == "active"
    assert image["name"] == "disk"
    assert image["disk_format"] == "raw"
    stored = stored_path(image["locations"][0]["url"])
    assert (image["checksum"], image["os_hash_value"]) == file_digests(stored)
    assert image["size"] == stored.stat().st_size
    assert image["virtual_size"] == qemu_info(src, "qcow2")["virtual-size"]
    assert "stage" in proc.stderr  # the progress display went to stderr

    shown = json.loads(_run(["images", "show", image["id"], "--json"], env).stdout)
    assert shown == image
    listed = json.loads(_run(["images", "list", "--json"], env).stdout)
    assert [i["id"] for i in listed["images"]] == [image["id"]]
    tasks = json.loads(_run(["tasks", "list", "--status", "success", "--json"], env).stdout)
    [task] = tasks["tasks"]
    assert task["image_id"] == image["id"]
    detail = json.loads(_run(["tasks", "show", task["id"], "--json"], env).stdout)
    assert detail["status"] == "success"
    assert [s["stage"] for s in detail["stages"]] == [
        "stage", "verify", "inspect", "convert", "copy", "activate",
    ]  # fmt: skip


def test_import_failure_exits_non_zero_with_one_clear_line(env, tmp_path):
    src = make_qcow2(tmp_path / "disk.qcow2")
    proc = _run(["import", str(src), "--checksum", "0" * 32, "--json"], env, check=False)

    assert proc.returncode == 1
    image = json.loads(proc.stdout)
    assert image["status"] == "queued"
    assert "[checksum_mismatch]" in proc.stderr


def test_import_refuses_bad_arguments_before_creating_anything(env, tmp_path):
    src = make_qcow2(tmp_path / "disk.qcow2")
    bad_format = _run(["import", str(src), "--disk-format", "floppy"], env, check=False)
    bad_hash = _run(["import", str(src), "--hash", "md4:abc"], env, check=False)
    missing = _run(["import", str(tmp_path / "nope.qcow2")], env, check=False)
    bad_store = _run(["import", str(src), "--store", "elsewhere"], env, check=False)

    for proc in (bad_format, bad_hash, missing, bad_store):
        assert proc.returncode == 2
        assert "error [invalid_request]" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert json.loads(_run(["images", "list", "--json"], env).stdout) == {"images": []}


def test_no_wait_prints_ids_and_still_finishes_in_embedded_mode(env, tmp_path):
    src = make_qcow2(tmp_path / "disk.qcow2")
    proc = _run(["import", str(src), "--no-wait", "--json"], env)

    ids = json.loads(proc.stdout)
    assert set(ids) == {"image_id", "task_id"}
    image = json.loads(_run(["images", "show", ids["image_id"], "--json"], env).stdout)
    assert image["status"] == "active"


def test_unknown_ids_are_reported_not_traced(env):
    proc = _run(["images", "show", "00000000-0000-0000-0000-000000000000"], env, check=False)
    assert proc.returncode == 2
    assert "[not_found]" in proc.stderr


@pytest.mark.parametrize(
    ("declared", "verdict", "code"),
    [("qcow2", "accept", None), ("raw", "reject", "format_mismatch"), (None, "accept", None)],
)
def test_inspect_checks_without_storing(env, tmp_path, declared, verdict, code):
    src = make_qcow2(tmp_path / "disk.qcow2", virtual=20 * MIB)
    args = ["inspect", str(src), "--json"] + (["--disk-format", declared] if declared else [])
    proc = _run(args, env, check=False)

    result = json.loads(proc.stdout)
    assert result["verdict"] == verdict
    assert result["reason_code"] == code
    assert result["detected_format"] == "qcow2"
    assert proc.returncode == (0 if verdict == "accept" else 1)
    if verdict == "accept":
        assert result["virtual_size"] == 20 * MIB
    assert not Path(env["IMAGEPORT_DATA_DIR"]).exists() or not any(
        (Path(env["IMAGEPORT_DATA_DIR"]) / "images").glob("*")
    )


def test_inspect_reports_checksum_mismatch(env, tmp_path):
    src = make_qcow2(tmp_path / "disk.qcow2")
    proc = _run(["inspect", str(src), "--checksum", "f" * 32, "--json"], env, check=False)
    assert json.loads(proc.stdout)["reason_code"] == "checksum_mismatch"


def test_db_upgrade_is_idempotent(env):
    for _ in range(2):
        assert "is current" in _run(["db", "upgrade"], env).stdout
