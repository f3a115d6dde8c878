"""What operators look at: the Grafana dashboard and the Prometheus rules in deploy/.

Every metric they query must be one the code exports, every query must parse (promtool), and
the alert rules must fire as their unit tests say (``promtool test rules``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/imageport-rules.yml"
RULES_TEST = ROOT / "deploy/prometheus/imageport-rules.test.yml"
DASHBOARD = ROOT / "deploy/grafana/imageport-workers.json"
METRIC = re.compile(r"\b(imageport_[a-z_]+)")
#: Series every Prometheus makes itself (not exported by imageport).
PROMETHEUS_SERIES = {"up"}
SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def exported() -> set[str]:
    """Metric names the workers export: the literals in src/imageport/workers/."""
    names: set[str] = set()
    for path in (ROOT / "src/imageport/workers").glob("*.py"):
        names |= set(re.findall(r'"(imageport_[a-z_]+)"', path.read_text()))
    return names | {n + s for n in names for s in SUFFIXES}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def rule_queries() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is required in CI (scripts/bootstrap.sh --test installs it)")
        pytest.skip("promtool is not installed: apt-get install prometheus")
    return found


def test_the_code_exports_what_the_docs_promise():
    names = exported()
    for name in ("imageport_project_imports", "imageport_worker_processes",
                 "imageport_space_waits_total", "imageport_queue_depth"):  # fmt: skip
        assert name in names


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_queries_use_only_exported_metrics(source):
    queries = dashboard_queries() if source == "dashboard" else rule_queries()
    assert queries
    used = {m for q in queries for m in METRIC.findall(q)}
    unknown = sorted(used - exported())
    assert not unknown, f"{source} queries metrics the code does not export: {unknown}"


def test_the_dashboard_covers_what_operators_watch():
    queries = " ".join(dashboard_queries())
    for needed in ('state="queued"', "imageport_imports_total", "code",
                   "imageport_stage_duration_seconds_bucket", "imageport_bytes_processed_total",
                   "imageport_worker_processes", "imageport_lease_takeovers_total"):  # fmt: skip
        assert needed in queries, needed


def test_alert_rules_pass_promtool():
    promtool = _promtool()
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULES_TEST)]):
        done = subprocess.run(
            [promtool, *args], capture_output=True, text=True, check=False, cwd=RULES.parent
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_queries_parse(tmp_path):
    """promtool has no expression linter: the queries become recording rules it checks."""
    promtool = _promtool()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": q}
                    for i, q in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
