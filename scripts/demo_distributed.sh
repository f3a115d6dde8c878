#!/usr/bin/env bash
# The distributed mode on one machine, without containers: the steps of docs/operations.md
# ("Distributed mode on one machine, step by step"), run end to end.
#
#   scripts/demo_distributed.sh            (or: make demo-distributed)
#
# Starts, as separate processes in a private temporary directory: redis-server, PostgreSQL (a
# fresh database on IMAGEPORT_TEST_DATABASE_URL or 127.0.0.1:5432/test, else a throwaway
# initdb server), an S3 server (moto_server from the venv), `imageport api` when this build has
# it, and ONE worker process group. It imports DEMO_IMAGES qcow2 images (through the API when
# it exists, else with `imageport import URL --no-wait`) by web-download from a local HTTP
# server (rate-limited, so every import lasts seconds) to a file store and an S3 store; once
# the first group runs a job it starts a SECOND worker group (scale 1 -> 2), waits for every
# image to be active, verifies each record against the stored bytes (file and S3),
# prints a summary and stops everything (SIGTERM first: the workers must exit 0).
#
# Environment: DEMO_IMAGES (default 8), DEMO_SOURCE_RATE_MIB (MiB/s per download, default 6),
# DEMO_TIMEOUT seconds for the imports (default 120), VENV (default .venv), KEEP_DEMO_DIR=1
# keeps the temporary directory for inspection. Takes 40-80 s.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
IMAGES=${DEMO_IMAGES:-8}
SOURCE_RATE_MIB=${DEMO_SOURCE_RATE_MIB:-6}
TIMEOUT=${DEMO_TIMEOUT:-120}
export PATH="$VENV/bin:$PATH"
PY="$VENV/bin/python"
STARTED=$(date +%s)

log() { echo "demo: $*" >&2; }
die() { log "FAILED: $*"; exit 1; }
for tool in redis-server moto_server imageport qemu-img curl; do
  command -v "$tool" >/dev/null || die "$tool not found (run scripts/bootstrap.sh --test)"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/imageport-demo.XXXXXX")
chmod 755 "$WORK"  # the postgres user must reach its data directory below
declare -a PIDS=() NAMES=()
PG_CTL=() PG_ADMIN_URL="" DEMO_DB=""

# --- clean-up: everything this script started, by pid, newest first ------------------------
stop_pid() {  # pid name: SIGTERM, up to 45 s (worker grace 30 s + 5 s), then SIGKILL
  local pid=$1 name=$2 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 450; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  log "$name (pid $pid) ignored SIGTERM; killing it"
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}" "${NAMES[i]}"; done
  wait 2>/dev/null || true
  if [ -n "$DEMO_DB" ]; then
    "$PY" - "$PG_ADMIN_URL" "$DEMO_DB" <<'EOF' || true
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute(f'DROP DATABASE IF EXISTS "{sys.argv[2]}" WITH (FORCE)')
EOF
  fi
  if [ ${#PG_CTL[@]} -gt 0 ]; then "${PG_CTL[@]}" -m fast stop >/dev/null 2>&1 || true; fi
  if [ "$rc" -ne 0 ]; then
    for f in "$WORK"/*.log; do
      [ -f "$f" ] || continue
      echo "----- last lines of $f" >&2; tail -n 25 "$f" >&2
    done
  fi
  if [ "${KEEP_DEMO_DIR:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() {  # name command...: run in the background, log to $WORK/name.log, remember the pid
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=("$!"); NAMES+=("$name")
  log "started $name (pid $!): $*"
}
free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_until() {  # seconds what command...: poll every 0.2 s
  local seconds=$1 what=$2 i; shift 2
  for ((i = 0; i < seconds * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "timed out after ${seconds}s waiting for $what"
}
http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }

# --- 0. Sample images (made while the services start) ----------------------------------------
mkdir -p "$WORK/src"
SAMPLERS=()
for ((i = 1; i <= IMAGES; i++)); do
  scripts/make_sample.sh "$WORK/src/disk-$i.qcow2" 64M 24 >/dev/null &
  SAMPLERS+=("$!")
done

# --- 1. Redis: the broker ---------------------------------------------------------------
REDIS_PORT=$(free_port)
mkdir -p "$WORK/redis"
start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$WORK/redis"
wait_until 10 "redis-server" redis-cli -p "$REDIS_PORT" ping

# --- 2. PostgreSQL: the records -------------------------------------------------------------
pg_reachable() { "$PY" -c 'import sys, psycopg; psycopg.connect(sys.argv[1], connect_timeout=3).close()' "$1"; }
libpq_url() { echo "${1/postgresql+psycopg:/postgresql:}"; }
if [ -n "${IMAGEPORT_TEST_DATABASE_URL:-}" ]; then
  PG_ADMIN_URL=$(libpq_url "$IMAGEPORT_TEST_DATABASE_URL")
elif pg_reachable postgresql://postgres@127.0.0.1:5432/test 2>/dev/null; then
  PG_ADMIN_URL=postgresql://postgres@127.0.0.1:5432/test
else
  PG_BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n1)")
  [ -x "$PG_BIN/initdb" ] || die "no PostgreSQL: set IMAGEPORT_TEST_DATABASE_URL or install postgresql"
  PG_PORT=$(free_port)
  AS_PG=(); [ "$(id -u)" = 0 ] && AS_PG=(runuser -u postgres --)
  mkdir -p "$WORK/pg"; [ "$(id -u)" = 0 ] && chown postgres: "$WORK/pg"
  "${AS_PG[@]}" "$PG_BIN/initdb" -D "$WORK/pg/data" -A trust -U postgres >"$WORK/initdb.log" 2>&1
  PG_CTL=("${AS_PG[@]}" "$PG_BIN/pg_ctl" -D "$WORK/pg/data")
  "${PG_CTL[@]}" -l "$WORK/pg/server.log" -w start \
    -o "-p $PG_PORT -k $WORK/pg -c listen_addresses=127.0.0.1 -c fsync=off" >/dev/null
  PG_ADMIN_URL=postgresql://postgres@127.0.0.1:$PG_PORT/postgres
fi
pg_reachable "$PG_ADMIN_URL" || die "PostgreSQL at $PG_ADMIN_URL is not reachable"
DEMO_DB=imageport_demo_$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
"$PY" - "$PG_ADMIN_URL" "$DEMO_DB" <<'EOF'
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute(f'CREATE DATABASE "{sys.argv[2]}"')
EOF
DATABASE_URL=$("$PY" -c '
import sys
from sqlalchemy import make_url
url = make_url(sys.argv[1]).set(drivername="postgresql+psycopg", database=sys.argv[2])
print(url.render_as_string(hide_password=False))' "$PG_ADMIN_URL" "$DEMO_DB")
log "database $DEMO_DB on $(libpq_url "$PG_ADMIN_URL" | sed 's#/[^/]*$##')"

# --- 3. An S3 server, and the bucket ------------------------------------------------------
S3_PORT=$(free_port)
start s3 moto_server -H 127.0.0.1 -p "$S3_PORT"
wait_until 20 "moto_server" http_ok "http://127.0.0.1:$S3_PORT/"
"$PY" - "http://127.0.0.1:$S3_PORT" <<'EOF'
import sys, boto3
boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
             aws_access_key_id="demo", aws_secret_access_key="demo-secret").create_bucket(Bucket="images")
EOF

# --- 3b. An HTTP server for the sources (web-download), at a fixed rate per download, so each
# import lasts a few seconds whatever the CPU: the second worker group has work to take.
SRC_PORT=$(free_port)
cat >"$WORK/serve_sources.py" <<'EOF'
"""Serve DIR on 127.0.0.1:PORT, each response at RATE bytes per second."""
import http.server, pathlib, sys, time
root, port, rate = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        path = root / pathlib.PurePosixPath(self.path).name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        step = max(1, rate // 10)
        try:
            for start in range(0, len(data), step):
                self.wfile.write(data[start:start + step])
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
EOF
start sources "$PY" "$WORK/serve_sources.py" "$WORK/src" "$SRC_PORT" $((SOURCE_RATE_MIB << 20))
SOURCES="http://127.0.0.1:$SRC_PORT"

# --- 4. Configuration: one environment for the api and every worker ------------------------
cat >"$WORK/imageport.toml" <<EOF
default_store = "local"

[stores.local]
kind = "file"
path = "$WORK/data/images"

[stores.objects]
kind = "s3"
bucket = "images"
endpoint_url = "http://127.0.0.1:$S3_PORT"
region = "us-east-1"
access_key = "demo"
secret_key = "demo-secret"
prefix = "glance/"
EOF
export IMAGEPORT_CONFIG="$WORK/imageport.toml"
export IMAGEPORT_DATA_DIR="$WORK/data"
export IMAGEPORT_DATABASE_URL="$DATABASE_URL"
export IMAGEPORT_BROKER_URL="redis://127.0.0.1:$REDIS_PORT/0"
export IMAGEPORT_LOG_LEVEL=info
export IMAGEPORT_LOG_JSON=true
# web-download refuses loopback and ports other than 80/443 unless allowed explicitly.
export IMAGEPORT_WEB_DOWNLOAD_ALLOWED_NETWORKS='["127.0.0.0/8"]'
export IMAGEPORT_WEB_DOWNLOAD_PORTS="[80, 443, $SRC_PORT]"

# --- 5. Migrations, then a look at the stores -----------------------------------------------
imageport db upgrade
imageport stores list

# --- 6. The API (issue 6), when this build has it -------------------------------------------
API=""
if imageport api --help >/dev/null 2>&1; then
  API_PORT=$(free_port)
  API="http://127.0.0.1:$API_PORT"
  start api imageport api --host 127.0.0.1 --port "$API_PORT"
  wait_until 30 "imageport api /readyz" http_ok "$API/readyz"
else
  log "imageport api is not available in this build: importing with imageport import --no-wait"
fi

# --- 7. ONE worker process group ---------------------------------------------------------------
M1=$(free_port)
start worker-1 imageport worker --processes 1 --threads 1 --metrics-port "$M1"
wait_until 30 "worker group 1 /readyz" http_ok "http://127.0.0.1:$M1/readyz"

# --- 8. Import several images ---------------------------------------------------------------
wait "${SAMPLERS[@]}" || die "scripts/make_sample.sh failed"
HDR=(-H "X-Roles: admin" -H "X-Project-Id: demo" -H "X-User-Id: demo")
api_json() {  # method path [curl args...]: JSON response on stdout
  local method=$1 path=$2; shift 2
  curl -fsS -X "$method" "${HDR[@]}" "$@" "$API$path"
}
json_field() { "$PY" -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
: >"$WORK/ids"
submit() {  # i: create the image and queue its web-download import; prints "IMAGE_ID SOURCE"
  local i=$1 src="$WORK/src/disk-$1.qcow2" id
  if [ -n "$API" ]; then
    id=$(api_json POST /v2/images -H "Content-Type: application/json" \
      -d "{\"name\": \"disk-$i\", \"disk_format\": \"qcow2\", \"container_format\": \"bare\"}" \
      | json_field id)
    api_json POST "/v2/images/$id/import" -H "Content-Type: application/json" \
      -d "{\"method\": {\"name\": \"web-download\", \"uri\": \"$SOURCES/disk-$i.qcow2\"}, \"stores\": [\"local\", \"objects\"]}" \
      >/dev/null
  else
    id=$(imageport import "$SOURCES/disk-$i.qcow2" --name "disk-$i" --disk-format qcow2 \
      --store local --store objects --no-wait | json_field image_id)
  fi
  [ -n "$id" ] && echo "$id $src"
}
# All at once, as many clients would: the queue grows faster than one worker group drains it.
SUBMITTERS=()
for ((i = 1; i <= IMAGES; i++)); do
  submit "$i" >"$WORK/submitted-$i" &
  SUBMITTERS+=("$!")
done

# Progress comes from the workers' /metrics (cheap to poll): imageport_imports_total.
imports_done() {  # outcome port... -> imports with that outcome, summed over the groups
  local outcome=$1 port total=0 n; shift
  for port in "$@"; do
    n=$(curl -fsS --max-time 5 "http://127.0.0.1:$port/metrics" | awk -v o="outcome=\"$outcome\"" '
      /^imageport_imports_total\{/ && index($0, o) { s += $NF } END { printf "%d", s }')
    total=$((total + n))
  done
  echo "$total"
}
at_least() {  # n outcome port...
  local n=$1; shift
  local got; got=$(imports_done "$@")
  [ "$got" -ge "$n" ]
}

# --- 9. Scale from one worker group to two, mid-run -------------------------------------------
busy() {  # port: the group is running a job or has finished one
  curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" | awk '
    /^imageport_(jobs_in_flight|imports_total\{)/ { s += $NF } END { exit !(s >= 1) }'
}
wait_until "$TIMEOUT" "worker group 1 to take its first job" busy "$M1"
M2=$(free_port)
start worker-2 imageport worker --processes 1 --threads 1 --metrics-port "$M2"
wait_until 30 "worker group 2 /readyz" http_ok "http://127.0.0.1:$M2/readyz"
log "scaled from one worker group to two mid-run ($(imports_done success "$M1") of $IMAGES done so far)"
for pid in "${SUBMITTERS[@]}"; do wait "$pid" || die "an import could not be submitted"; done
cat "$WORK"/submitted-* >"$WORK/ids"
log "$IMAGES imports queued"

deadline=$(($(date +%s) + TIMEOUT))
until at_least "$IMAGES" success "$M1" "$M2"; do
  failed=$(imports_done failure "$M1" "$M2")
  [ "$failed" = 0 ] || die "$failed import(s) failed (see: imageport tasks list --status failure)"
  [ "$(date +%s)" -lt "$deadline" ] || die "imports not finished after ${TIMEOUT}s"
  sleep 0.5
done
log "all $IMAGES imports finished"

# --- 10. Verify every record against the stored bytes (file store and S3) ---------------------
imageport images list --json >"$WORK/images.json"
"$PY" - "$WORK" "$IMAGES" <<'EOF' || die "the image records are not what the imports should give"
import json, pathlib, sys
work, expected = pathlib.Path(sys.argv[1]), int(sys.argv[2])
images = json.loads((work / "images.json").read_text())["images"]
assert len(images) == expected, f"{len(images)} images, expected {expected}"
for image in images:
    assert image["status"] == "active", f"{image['id']} is {image['status']}"
    assert image["disk_format"] == "qcow2", f"{image['id']} is {image['disk_format']}"
    stores = sorted(loc["metadata"]["store"] for loc in image["locations"])
    assert stores == ["local", "objects"], f"{image['id']} is in {stores}"
EOF
VERIFIERS=()
while read -r id src; do
  { imageport images show "$id" --json >"$WORK/record-$id.json" \
      && "$PY" scripts/verify_import.py "$WORK/record-$id.json" --source "$src" --target-format qcow2
  } >"$WORK/verify-$id.out" 2>&1 &
  VERIFIERS+=("$!")
done <"$WORK/ids"
for pid in "${VERIFIERS[@]}"; do
  wait "$pid" || { cat "$WORK"/verify-*.out >&2; die "a file store copy does not match its record"; }
done
"$PY" - "$WORK" <<'EOF' || die "an S3 copy does not match its record"
import hashlib, json, pathlib, sys, tomllib
import boto3
work = pathlib.Path(sys.argv[1])
conf = tomllib.loads((work / "imageport.toml").read_text())["stores"]["objects"]
s3 = boto3.client("s3", endpoint_url=conf["endpoint_url"], region_name=conf["region"],
                  aws_access_key_id=conf["access_key"], aws_secret_access_key=conf["secret_key"])
for record in sorted(work.glob("record-*.json")):
    image = json.loads(record.read_text())
    urls = [l["url"] for l in image["locations"] if l["metadata"].get("store") == "objects"]
    bucket, key = urls[0].removeprefix("s3://").split("/", 1)  # s3://BUCKET/KEY
    assert bucket == conf["bucket"] and key.startswith(conf["prefix"]), urls[0]
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    md5, multi, size = hashlib.md5(), hashlib.new(image["os_hash_algo"]), 0
    for chunk in iter(lambda: body.read(8 << 20), b""):
        md5.update(chunk); multi.update(chunk); size += len(chunk)
    assert size == image["size"], f"{image['id']}: S3 object is {size} bytes, record says {image['size']}"
    assert md5.hexdigest() == image["checksum"], f"{image['id']}: S3 MD5 differs"
    assert multi.hexdigest() == image["os_hash_value"], f"{image['id']}: S3 {image['os_hash_algo']} differs"
EOF
log "hashes verified: every record matches its file store and S3 copies"

# --- 11. Summary ------------------------------------------------------------------------------
N1=$(imports_done success "$M1"); N2=$(imports_done success "$M2")
echo
echo "imageport distributed demo: $IMAGES images imported (qcow2, stores local + objects)"
if [ -n "$API" ]; then echo "  submitted through: imageport api at $API (web-download from $SOURCES)"
else echo "  submitted through: imageport import URL --no-wait (this build has no imageport api)"; fi
echo "  worker group 1 (started first):   $N1 imports   http://127.0.0.1:$M1/metrics"
echo "  worker group 2 (started mid-run): $N2 imports   http://127.0.0.1:$M2/metrics"
"$PY" - "$WORK/images.json" <<'EOF'
import json, sys
for i in sorted(json.load(open(sys.argv[1]))["images"], key=lambda i: i["name"]):
    stores = "+".join(sorted(l["metadata"]["store"] for l in i["locations"]))
    print("  %s  %-7s %-6s %-4s %10d bytes  %s  md5 %s"
          % (i["id"], i["name"], i["status"], i["disk_format"], i["size"], stores, i["checksum"]))
EOF
for ((i = 0; i < ${#PIDS[@]}; i++)); do  # resident memory of each worker group, after the run
  case ${NAMES[i]} in worker-*)
    kib=$(ps -o rss= -p "${PIDS[i]}" --ppid "${PIDS[i]}" | awk '{ s += $1 } END { print s }')
    echo "  ${NAMES[i]} resident memory now (supervisor + workers): $((kib / 1024)) MiB" ;;
  esac
done
[ $((N1 + N2)) -eq "$IMAGES" ] || die "the workers report $((N1 + N2)) imports, expected $IMAGES"
[ "$N2" -gt 0 ] || die "the second worker group took no job: scaling out did not help"

# --- 12. Stop: SIGTERM, the workers must exit 0 ------------------------------------------------
for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
  case ${NAMES[i]} in
    worker-*|api)
      kill -TERM "${PIDS[i]}"
      set +e; wait "${PIDS[i]}"; code=$?; set -e
      # 143 = ended by the SIGTERM itself: accepted from the api (no job state to save there).
      [ "$code" = 0 ] || { [ "${NAMES[i]}" = api ] && [ "$code" = 143 ]; } \
        || die "${NAMES[i]} exited $code after SIGTERM"
      log "${NAMES[i]} stopped cleanly"
      ;;
  esac
done
echo "  elapsed: $(($(date +%s) - STARTED)) s; all workers stopped cleanly (exit 0)"
echo "demo-distributed: OK"
