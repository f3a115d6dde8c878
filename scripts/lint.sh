#!/usr/bin/env bash
# Static checks; stops at the first failure. Used by `make lint` and scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

run() { echo "+ $*" >&2; "$@"; }
run "$VENV/bin/ruff" check src tests bench
run "$VENV/bin/ruff" format --check src tests bench
run "$VENV/bin/mypy" src
