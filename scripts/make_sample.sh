#!/usr/bin/env bash
# Build a sample qcow2 holding real, incompressible data.
#
#   scripts/make_sample.sh OUT.qcow2 [VIRTUAL_SIZE] [DATA_MIB]
#
# VIRTUAL_SIZE takes K/M/G/T suffixes (binary, like qemu-img; default 1G). DATA_MIB (default
# 320) MiB of pseudo-random bytes are written as a few regions spread across the disk; the rest
# stays unallocated. Each region starts 1 MiB into its slot, so sector 0 (partition tables,
# format magics) stays zero. The bytes come from AES-CTR over zeros (openssl, ~5x faster than
# /dev/urandom here) or /dev/urandom when openssl is missing: random data, new on every build.
#
# The image is built as a sparse raw file next to OUT, converted with qemu-img, then moved into
# place. OUT is kept (and nothing rebuilt) when it is newer than this script and has the asked
# virtual size and data size.
set -euo pipefail

usage() { echo "usage: $0 OUT.qcow2 [VIRTUAL_SIZE] [DATA_MIB]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 3 ] || usage
out=$1
vsize_arg=${2:-1G}
data_mib=${3:-320}

to_bytes() {
  local v=$1 n unit
  if [[ ! $v =~ ^([0-9]+)([KkMmGgTt]?)[iI]?[bB]?$ ]]; then
    echo "make_sample: bad size '$v' (use e.g. 512M, 1G, 4G)" >&2; exit 2
  fi
  n=${BASH_REMATCH[1]}; unit=${BASH_REMATCH[2]^^}
  case "$unit" in
    "") echo "$n" ;;
    K) echo $((n << 10)) ;;
    M) echo $((n << 20)) ;;
    G) echo $((n << 30)) ;;
    T) echo $((n << 40)) ;;
  esac
}

[[ $data_mib =~ ^[0-9]+$ ]] || { echo "make_sample: DATA_MIB must be an integer" >&2; exit 2; }
vsize=$(to_bytes "$vsize_arg")
mib=$((1 << 20))
(( vsize % mib == 0 )) || { echo "make_sample: VIRTUAL_SIZE must be a multiple of 1 MiB" >&2; exit 2; }
vsize_mib=$((vsize / mib))

for tool in qemu-img python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "make_sample: $tool not found" >&2; exit 1; }
done

# Data bytes (allocated, non-zero) of a qcow2, from qemu-img map.
data_bytes_of() {
  qemu-img map -f qcow2 --output=json "$1" | python3 -c \
    'import json, sys; print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))'
}
virtual_size_of() {
  qemu-img info -f qcow2 --output=json "$1" | python3 -c \
    'import json, sys; print(json.load(sys.stdin)["virtual-size"])'
}
report() {
  local what=$1
  echo "$what $out: qcow2, virtual size $(virtual_size_of "$out") bytes, $(data_bytes_of "$out") bytes of random data, file $(stat -c %s "$out") bytes"
}

if [ -f "$out" ] && [ "$out" -nt "$0" ] \
  && [ "$(virtual_size_of "$out" 2>/dev/null)" = "$vsize" ] \
  && [ "$(data_bytes_of "$out" 2>/dev/null)" = $((data_mib * mib)) ]; then
  report "kept"
  exit 0
fi

# Layout: up to 4 regions, one per equal slot, each 1 MiB into its slot.
regions=4
(( data_mib < regions )) && regions=$(( data_mib > 0 ? data_mib : 1 ))
slot_mib=$((vsize_mib / regions))
base_mib=$((data_mib / regions))
if (( data_mib > 0 && base_mib + (data_mib % regions) + 1 > slot_mib )); then
  echo "make_sample: $data_mib MiB of data does not fit in $vsize_arg in $regions regions" >&2
  exit 2
fi

mkdir -p "$(dirname "$out")"
tmpdir=$(mktemp -d "$(dirname "$out")/.make_sample.XXXXXX")
trap 'rm -rf "$tmpdir"' EXIT
raw="$tmpdir/sample.raw"
truncate -s "$vsize" "$raw"

random_stream() {  # $1: region index; pseudo-random bytes until the reader closes the pipe
  if command -v openssl >/dev/null 2>&1; then
    local key
    key=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
    # SIGPIPE when dd has read enough is the normal way out.
    openssl enc -aes-128-ctr -nosalt -K "$key" -iv "$(printf '%032x' "$1")" </dev/zero 2>/dev/null || true
  else
    cat /dev/urandom 2>/dev/null || true
  fi
}

for ((i = 0; i < regions && data_mib > 0; i++)); do
  len=$base_mib
  (( i == regions - 1 )) && len=$((base_mib + data_mib % regions))
  seek=$((i * slot_mib + 1))
  random_stream "$i" | dd of="$raw" bs=1M count="$len" seek="$seek" \
    conv=notrunc iflag=fullblock status=none
done

written=$(($(stat -c '%b * %B' "$raw")))   # allocated bytes
if (( written < data_mib * mib )); then
  echo "make_sample: only $written bytes allocated in $raw, expected $((data_mib * mib))" >&2
  exit 1
fi

qemu-img convert -f raw -O qcow2 "$raw" "$tmpdir/sample.qcow2"
got=$(data_bytes_of "$tmpdir/sample.qcow2")
if [ "$got" != $((data_mib * mib)) ]; then
  echo "make_sample: qcow2 holds $got data bytes, expected $((data_mib * mib))" >&2
  exit 1
fi
mv -f "$tmpdir/sample.qcow2" "$out"
report "made"
