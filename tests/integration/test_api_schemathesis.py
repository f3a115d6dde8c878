"""The served OpenAPI document, fuzzed by schemathesis: no request may end in a 5xx."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
from api_support import api_server

HOOKS_DIR = Path(__file__).parent  # st_hooks.py teaches schemathesis Glance's patch type
RUN_TIMEOUT = 120  # seconds; the run itself is bounded by --max-examples (~15 s here)


def test_schemathesis_finds_no_server_error(tmp_path):
    st = Path(sys.executable).with_name("st")
    with api_server(tmp_path / "data") as server:
        seeded = httpx.post(f"{server.url}/v2/images", json={"name": "fuzz"})
        assert seeded.status_code == 201
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "st_hooks", "PYTHONPATH": str(HOOKS_DIR)}
        run = subprocess.run(
            [
                str(st), "run", f"{server.url}/openapi.json",
                "--checks", "not_a_server_error",
                "--max-examples", "20",
                "--request-timeout", "20",
                "--phases", "examples,coverage,fuzzing,stateful",
                "--seed", "1",
            ],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
        )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
