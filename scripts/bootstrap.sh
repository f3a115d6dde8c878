#!/usr/bin/env bash
# Idempotent set-up shared by `make run`, `make test`, `make bench` and `make lint`.
#
#   scripts/bootstrap.sh            venv + editable install with [dev] + qemu-img/qemu-io
#   scripts/bootstrap.sh --test     the above + redis-server, rabbitmq-server, PostgreSQL, promtool
#   scripts/bootstrap.sh --venv-only  only the venv (for lint: no system packages)
#
# Environment: PYTHON (default python3), VENV (default .venv).
set -euo pipefail

mode=run
case "${1:-}" in
  "") ;;
  --test) mode=test ;;
  --venv-only) mode=venv ;;
  -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--test|--venv-only]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

log() { echo "bootstrap: $*" >&2; }

# --- Python venv -------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "imageport needs python3 (>= 3.11): run 'sudo apt-get install python3 python3-venv'" >&2
    exit 1
  fi
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "imageport needs Python >= 3.11; $PYTHON is $("$PYTHON" -V 2>&1)" >&2
    exit 1
  fi
  log "creating $VENV with $("$PYTHON" -V 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.imageport-dev-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "pip install -e '.[dev]'"
  "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
  touch "$stamp"
fi

[ "$mode" = venv ] && exit 0

# --- system tools ------------------------------------------------------------------------
missing=()    # Debian packages to install
if ! command -v qemu-img >/dev/null 2>&1 || ! command -v qemu-io >/dev/null 2>&1; then
  missing+=(qemu-utils)
fi
if [ "$mode" = test ]; then
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  # The RabbitMQ variants of the worker and chaos tests start throwaway nodes of their own.
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
  # promtool checks deploy/prometheus/ (Debian's prometheus package; its daemon stays off).
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    missing+=(postgresql)
  fi
  # Real image producers' tools for the producer matrix (hybrid ISO, GPT written by sgdisk).
  command -v xorriso >/dev/null 2>&1 || missing+=(xorriso)
  command -v sgdisk >/dev/null 2>&1 || missing+=(gdisk)
  # Keystone's venv (below) compiles uWSGI: a C compiler and Python's headers.
  command -v cc >/dev/null 2>&1 || missing+=(gcc)
  if ! "$PYTHON" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    missing+=(python3-dev)
  fi
fi

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    for pkg in "${missing[@]}"; do
      case "$pkg" in
        qemu-utils)
          echo "imageport needs qemu-img: run 'sudo apt-get install --no-install-recommends qemu-utils'" >&2 ;;
        *)
          echo "imageport's tests need $pkg: run 'sudo apt-get install --no-install-recommends $pkg'" >&2 ;;
      esac
    done
    exit 1
  fi
  log "apt-get install ${missing[*]}"
  apt-get update -qq </dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi

# --- Keystone for the identity tests -----------------------------------------------------
# Its own venv, so Keystone's pins never meet imageport's; rebuilt when the wanted versions
# change. tests/integration/keystone_support.py runs it (uWSGI, SQLite, fernet keys).
if [ "$mode" = test ]; then
  KEYSTONE_VENV=${KEYSTONE_VENV:-.venv-keystone}
  keystone_spec="keystone==30.0.0 uWSGI==2.0.31"
  keystone_stamp="$KEYSTONE_VENV/.imageport-keystone"
  if [ ! -f "$keystone_stamp" ] || [ "$(cat "$keystone_stamp")" != "$keystone_spec" ]; then
    log "creating $KEYSTONE_VENV: pip install $keystone_spec (about a minute, uWSGI compiles)"
    rm -rf "$KEYSTONE_VENV"
    "$PYTHON" -m venv "$KEYSTONE_VENV"
    # The venv ignores itself, so git never offers it for a commit.
    echo '*' >"$KEYSTONE_VENV/.gitignore"
    # shellcheck disable=SC2086 # the spec is a list of requirements
    "$KEYSTONE_VENV/bin/python" -m pip install --quiet $keystone_spec
    printf '%s\n' "$keystone_spec" >"$keystone_stamp"
  fi
fi
