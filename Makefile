# imageport developer entry points (GNU make). Every target sets up what it needs first.
#   make run     import a sample qcow2 as raw into ./imageport-data and verify the record
#   make test    lint, then the test suite (scripts/test.sh)
#   make lint    ruff + mypy
#   make bench   every benchmark (headline import, workers), one JSON document on stdout
#   make conformance  the same requests to a real Glance 33 and to `imageport api`; differences
#                     (installs Glance in .venv-glance; not part of make test)
#   make clean   remove build output, ./imageport-data and caches (keeps .venv)

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
SAMPLE := build/sample.qcow2
RECORD := build/import.json
BENCH_ARGS ?=
CONFORMANCE_ARGS ?=

.PHONY: help run test lint bench conformance clean distclean demo-distributed

help:
	@sed -n 's/^#   //p' Makefile

run:
	scripts/bootstrap.sh
	scripts/make_sample.sh $(SAMPLE)
	@mkdir -p build
	IMAGEPORT_DATA_DIR="$${IMAGEPORT_DATA_DIR:-./imageport-data}" \
	  $(VENV)/bin/imageport import $(SAMPLE) --name sample --disk-format qcow2 \
	  --target-format raw --json > $(RECORD).tmp \
	  || { rc=$$?; cat $(RECORD).tmp; echo "imageport import failed (exit $$rc)" >&2; exit $$rc; }
	@mv $(RECORD).tmp $(RECORD)
	@$(PY) -m json.tool $(RECORD)
	$(PY) scripts/verify_import.py $(RECORD) --source $(SAMPLE) --target-format raw

test:
	scripts/bootstrap.sh --test
	scripts/test.sh

lint:
	scripts/bootstrap.sh --venv-only
	scripts/lint.sh

bench:
	@scripts/bootstrap.sh --test >&2  # stdout carries only the JSON document
	@$(PY) bench/run.py $(BENCH_ARGS)

conformance:
	scripts/conformance.sh $(CONFORMANCE_ARGS)

demo-distributed:
	scripts/bootstrap.sh --test
	scripts/demo_distributed.sh

clean:
	rm -rf build imageport-data .mypy_cache .ruff_cache .pytest_cache
	find src tests bench scripts -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .venv-keystone
