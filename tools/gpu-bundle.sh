#!/usr/bin/env bash
# Collects what tools/gpu-check.sh needs on a GPU machine into one archive (<= 64 MiB, the most
# that travels to a device machine), and tests such an archive.
#
#   tools/gpu-bundle.sh make BINARY ARCHIVE   stage and pack (ARCHIVE ends in .tar.xz)
#   tools/gpu-bundle.sh test ARCHIVE [--device cpu]
#                                           unpack into a temporary folder, check the layout,
#                                           run gpu-check.sh there (on the CPU: --device cpu)
#
# BINARY is `primer` (the CUDA build from tools/cuda-build.sh for the real check; any build for
# testing the bundle). The archive holds:
#   primer-gpu-check/primer             the binary, stripped
#   primer-gpu-check/gpu-check.sh       the check (tools/gpu-check.sh)
#   primer-gpu-check/torch_ref.py       the bench's PyTorch side: the reference ($REFERENCE,
#   primer-gpu-check/torch_device.py    default ../shared/reference/torch_ref.py), what runs it
#   primer-gpu-check/bench_pe.py        on the GPU (tools/) and the LoRA rows' script (tools/)
#   primer-gpu-check/tiny-sweep.toml    the tiny sweep (tools/gpu-check/)
#   primer-gpu-check/golden/            the step dumps of $GOLDEN_DIR (default ../shared/golden);
#                                       not encoder/: it needs the 90 MB MiniLM checkpoint
#   primer-gpu-check/golden-pe/         tests/fixtures/golden-pe
#   primer-gpu-check/data/              the WikiAnn slices and tokenizer the tiny sweep reads
#   primer-gpu-check/NEEDS.txt          the shared libraries the binary needs at run time: the
#                                       CUDA ones are not carried (cuBLASLt alone is 550 MB); the
#                                       GPU machine must have them (a CUDA 13 toolkit, or the
#                                       nvidia-* wheels of a PyTorch cu13x install)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
GOLDEN_DIR="${GOLDEN_DIR:-$ROOT/../shared/golden}"
REFERENCE="${REFERENCE:-$ROOT/../shared/reference/torch_ref.py}"
MAX_BYTES=$((64 * 1024 * 1024))
NAME=primer-gpu-check
# The WikiAnn languages tiny-sweep.toml reads (its sources and targets).
SWEEP_LANGS=(en es hi af)

die() {
  echo "gpu-bundle: error: $*" >&2
  exit 1
}
say() { echo "gpu-bundle: $*" >&2; }
TMP_DIR=""
trap '[ -z "$TMP_DIR" ] || rm -rf "$TMP_DIR"' EXIT

cmd_make() {
  local binary="$1" archive="$2"
  [ -x "$binary" ] || die "no executable $binary (build it first: make check-cuda for the CUDA binary)"
  [ -d "$GOLDEN_DIR" ] || die "no golden dumps at $GOLDEN_DIR (set GOLDEN_DIR=/path/to/shared/golden)"
  [ -f "$REFERENCE" ] || die "no PyTorch reference at $REFERENCE (set REFERENCE=/path/to/torch_ref.py)"
  case "$archive" in *.tar.xz) ;; *) die "the archive must end in .tar.xz: $archive" ;; esac
  TMP_DIR="$(mktemp -d)"
  local stage="$TMP_DIR"
  local b="$stage/$NAME"
  mkdir -p "$b/golden" "$b/golden-pe" "$b/data/wikiann" "$b/data/tokenizer"
  strip -o "$b/primer" "$binary" 2>/dev/null || cp "$binary" "$b/primer"
  chmod +x "$b/primer"
  cp "$ROOT/tools/gpu-check.sh" "$b/"
  cp "$ROOT/tools/gpu-check/tiny-sweep.toml" "$ROOT/tools/torch_device.py" "$ROOT/tools/bench_pe.py" \
    "$REFERENCE" "$b/"
  local d n=0
  for d in "$GOLDEN_DIR"/*/; do
    if [ -f "$d/meta.json" ] && [ -f "$d/dump.safetensors" ]; then
      cp -r "${d%/}" "$b/golden/"
      n=$((n + 1))
    fi
  done
  [ "$n" -gt 0 ] || die "no step dumps (meta.json + dump.safetensors) under $GOLDEN_DIR"
  cp -r "$ROOT"/tests/fixtures/golden-pe/* "$b/golden-pe/"
  for l in "${SWEEP_LANGS[@]}"; do
    cp -r "$ROOT/data/wikiann/$l" "$b/data/wikiann/"
  done
  cp -r "$ROOT/data/tokenizer/bert-base-multilingual-cased" "$b/data/tokenizer/"
  {
    echo "primer built $(date -u +%Y-%m-%dT%H:%MZ) from $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    if [ -f "$binary.txt" ]; then
      cat "$binary.txt"
    else
      echo "needs at run time:"
      readelf -d "$b/primer" | sed -n 's/.*NEEDED.*\[\(.*\)\]/  \1/p'
    fi
    echo "Not carried: the CUDA libraries (libcuda.so.1 is the driver's; libcublas, libcublasLt,"
    echo "libcurand, libcudart, libnvrtc come from a CUDA 13 toolkit or PyTorch's nvidia-* wheels:"
    echo "gpu-check.sh looks in site-packages/nvidia/*/lib and /usr/local/cuda)."
  } >"$b/NEEDS.txt"
  mkdir -p "$(dirname "$archive")"
  tar -C "$stage" -cf - "$NAME" | xz -9 -T2 >"$archive.tmp"
  mv "$archive.tmp" "$archive"
  local size
  size="$(stat -c %s "$archive")"
  [ "$size" -le "$MAX_BYTES" ] || die "$archive is $size bytes, over the $MAX_BYTES that travel"
  say "$archive: $size bytes ($n golden dumps, binary $(stat -c %s "$b/primer") bytes unpacked)"
}

cmd_test() {
  local archive="$1" device="${2:-cpu}" size
  [ -f "$archive" ] || die "no archive $archive"
  size="$(stat -c %s "$archive")"
  [ "$size" -le "$MAX_BYTES" ] || die "$archive is $size bytes, over $MAX_BYTES"
  TMP_DIR="$(mktemp -d)"
  local dir="$TMP_DIR"
  tar -C "$dir" -xJf "$archive"
  local want
  for want in primer gpu-check.sh torch_ref.py torch_device.py bench_pe.py tiny-sweep.toml NEEDS.txt \
    golden-pe/tiny_lora/meta.json data/tokenizer/bert-base-multilingual-cased/vocab.txt; do
    [ -e "$dir/$NAME/$want" ] || die "$archive lacks $NAME/$want"
  done
  for l in "${SWEEP_LANGS[@]}"; do
    [ -d "$dir/$NAME/data/wikiann/$l" ] || die "$archive lacks $NAME/data/wikiann/$l"
  done
  ls "$dir/$NAME"/golden/*/dump.safetensors >/dev/null 2>&1 || die "$archive has no golden step dumps"
  say "layout ok ($size bytes); running gpu-check.sh --device $device --skip-torch"
  local json
  json="$("$dir/$NAME/gpu-check.sh" --device "$device" --skip-torch)" || {
    echo "$json"
    die "gpu-check.sh --device $device failed"
  }
  echo "$json"
  # Every dump carried was replayed and passed, the sweep's 7 runs are done, and both benches
  # (fp32 and bf16) reported every row with a time, each in its precision.
  python3 - "$json" "$(ls -d "$dir/$NAME"/golden/*/ "$dir/$NAME"/golden-pe/*/ | wc -l)" <<'PY'
import json, sys
s = json.loads(sys.argv[1])
carried = int(sys.argv[2])
dumps = s["verify_golden"]["dumps"]
assert len(dumps) == carried, f"{len(dumps)} dumps replayed, {carried} carried"
assert all(d["status"] == "pass" for d in dumps.values()), dumps
assert s["sweep"]["passed"], s["sweep"]
for key, precision in (("bench", "fp32"), ("bench_bf16", "bf16")):
    b = s[key]
    assert b["passed"] and b["device"] == s["device"], b
    assert b["precision"]["primer"] == precision, b["precision"]
    assert b["rows"] and all(r["primer_ms"] > 0 for r in b["rows"].values()), b["rows"]
PY
  say "gpu-check.sh passed on $device from the unpacked bundle"
}

case "${1:-}" in
  make) [ $# -eq 3 ] || die "usage: tools/gpu-bundle.sh make BINARY ARCHIVE"; cmd_make "$2" "$3" ;;
  test) [ $# -ge 2 ] || die "usage: tools/gpu-bundle.sh test ARCHIVE [DEVICE]"; cmd_test "$2" "${3:-cpu}" ;;
  *) echo "usage: tools/gpu-bundle.sh make BINARY ARCHIVE | test ARCHIVE [DEVICE]  (see the header)" >&2; exit 2 ;;
esac
