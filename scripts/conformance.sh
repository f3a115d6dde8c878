#!/usr/bin/env bash
# Side-by-side check against a real Glance (`make conformance`; not part of `make test`).
#
#   scripts/conformance.sh [--all] [--keep] [--output FILE]
#
# 1. imageport's venv as `make run` has it (scripts/bootstrap.sh: .venv, qemu-img).
# 2. Glance's own venv, .venv-glance: pip install glance==33.0.0 and uWSGI (compiled: needs a
#    C compiler and Python's headers). Made once, rebuilt when the wanted versions change;
#    imageport's venv never sees Glance's packages.
# 3. python -m conformance.run (imageport's venv): starts Glance under uWSGI and `imageport
#    api`, sends both the same requests, prints the differences, writes build/conformance.json.
#    Arguments go to it (--all prints every request, --keep keeps the servers' files).
#
# Exit status: conformance.run's (0 whatever the differences; 1 if the harness failed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
GLANCE_VENV=${GLANCE_VENV:-.venv-glance}
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

log() { echo "conformance: $*" >&2; }

scripts/bootstrap.sh >&2

# uWSGI compiles at install time.
missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc)
if ! "$PYTHON" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
  missing+=(python3-dev)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "conformance needs ${missing[*]} to build uWSGI: run 'sudo apt-get install --no-install-recommends ${missing[*]}'" >&2
    exit 1
  fi
  log "apt-get install ${missing[*]}"
  apt-get update -qq </dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi

glance_spec="glance==33.0.0 uWSGI==2.0.31"
stamp="$GLANCE_VENV/.imageport-glance"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$glance_spec" ]; then
  log "creating $GLANCE_VENV: pip install $glance_spec (about a minute the first time)"
  rm -rf "$GLANCE_VENV"
  "$PYTHON" -m venv "$GLANCE_VENV"
  # The venv ignores itself, so git never offers it for a commit.
  echo '*' >"$GLANCE_VENV/.gitignore"
  # shellcheck disable=SC2086 # the spec is a list of requirements
  "$GLANCE_VENV/bin/python" -m pip install --quiet $glance_spec
  printf '%s\n' "$glance_spec" >"$stamp"
fi

exec "$VENV/bin/python" -m conformance.run --glance-venv "$GLANCE_VENV" "$@"
