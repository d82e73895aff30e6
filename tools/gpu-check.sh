#!/usr/bin/env bash
# The one-call GPU check: run from an unpacked `make gpu-bundle` archive on a machine with an
# NVIDIA GPU and no Rust, it runs the carried `primer` (built with --features cuda) and prints
# ONE JSON summary on stdout (progress goes to stderr, logs to out/):
#
#   gpu           nvidia-smi's name, driver and memory (when nvidia-smi is there)
#   libraries     where the CUDA libraries the binary needs were found (or which are missing)
#   verify_golden `primer verify-golden golden golden-pe --device DEV --json` (the PyTorch dumps)
#   sweep         a tiny sweep (tiny-sweep.toml) with `--devices DEV --per-device 2`
#   bench         `primer bench` on DEV when this binary's bench takes a device; else why not
#   torch         PyTorch on the same GPU (torch_bench.py: mBERT-sized steps), if it is installed
#
#   usage: ./gpu-check.sh [--device cuda:0] [--skip-torch] [--skip-sweep]
#
# Exit status: 0 when verify-golden and the sweep passed, 1 otherwise (the JSON says which).
# `--device cpu` runs the same check on a machine without a GPU (how `make gpu-bundle-cpu`
# tests the bundle); the bench and PyTorch parts are skipped there.
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
cd "$HERE"
DEVICE="cuda:0"
SKIP_TORCH=0
SKIP_SWEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --device=*) DEVICE="${1#*=}"; shift ;;
    --skip-torch) SKIP_TORCH=1; shift ;;
    --skip-sweep) SKIP_SWEEP=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
say() { echo "gpu-check: $*" >&2; }
command -v python3 >/dev/null 2>&1 || { echo "gpu-check: python3 is needed to write the JSON summary" >&2; exit 2; }
OUT="$HERE/out"
rm -rf "$OUT" && mkdir -p "$OUT"
PRIMER="$HERE/primer"
[ -x "$PRIMER" ] || { echo "gpu-check: no executable $PRIMER: run this from an unpacked gpu bundle" >&2; exit 2; }

# --- the CUDA libraries the binary needs (NEEDS.txt lists them) ---------------------------------
# libcuda.so.1 is the driver's; the others come from a CUDA toolkit or the nvidia-* wheels that a
# PyTorch install brings (site-packages/nvidia/cu13/lib or nvidia/<name>/lib).
lib_dirs=()
for d in $(python3 - <<'PY'
import glob, os, site, sys
roots = set(site.getsitepackages() + [site.getusersitepackages()])
for p in sys.path:
    if p.endswith("site-packages"):
        roots.add(p)
dirs = []
for r in sorted(roots):
    dirs += glob.glob(os.path.join(r, "nvidia", "*", "lib"))
print("\n".join(sorted(set(dirs))))
PY
) /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && lib_dirs+=("$d")
done
LD_EXTRA="$(IFS=:; echo "${lib_dirs[*]:-}")"
export LD_LIBRARY_PATH="${LD_EXTRA}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ldd "$PRIMER" >"$OUT/ldd.txt" 2>&1 || true
missing="$(grep 'not found' "$OUT/ldd.txt" | awk '{print $1}' | tr '\n' ' ')"
[ -z "$missing" ] || say "libraries not found: $missing(see out/ldd.txt)"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt" 2>&1 || true

# --- the golden comparisons -------------------------------------------------------------------
say "verify-golden on $DEVICE"
t0=$(date +%s%N)
"$PRIMER" verify-golden golden golden-pe --device "$DEVICE" --json >"$OUT/verify.json" 2>"$OUT/verify.err"
rc=$?
echo "$rc $(( ($(date +%s%N) - t0) / 1000000 ))" >"$OUT/verify.rc"

# --- a tiny sweep, two runs at a time on the device --------------------------------------------
if [ "$SKIP_SWEEP" = 0 ]; then
  say "tiny sweep on $DEVICE, 2 runs per device"
  rm -rf model store results
  t0=$(date +%s%N)
  {
    "$PRIMER" init-model --out model --tokenizer-from data/tokenizer/bert-base-multilingual-cased \
      && "$PRIMER" run tiny-sweep.toml --devices "$DEVICE" --per-device 2 --plain
  } >"$OUT/sweep.log" 2>&1
  rc=$?
  echo "$rc $(( ($(date +%s%N) - t0) / 1000000 ))" >"$OUT/sweep.rc"
  "$PRIMER" status tiny-sweep.toml >"$OUT/sweep-status.txt" 2>&1 || true
fi

# --- primer bench on the device, when this build's bench can -----------------------------------
bench_note=""
if [ "$DEVICE" = cpu ]; then
  bench_note="skipped on cpu (the check times GPUs)"
elif "$PRIMER" bench --help 2>/dev/null | grep -q -- '--device'; then
  say "primer bench on $DEVICE ${PRIMER_BENCH_ARGS:-}"
  # shellcheck disable=SC2086  # PRIMER_BENCH_ARGS is a list of flags
  "$PRIMER" bench --device "$DEVICE" ${PRIMER_BENCH_ARGS:-} >"$OUT/bench.log" 2>&1
  rc=$?
  echo "$rc" >"$OUT/bench.rc"
else
  bench_note="this primer's bench has no --device flag (it times the MiniLM-sized model on the CPU against PyTorch); nothing timed on the GPU"
fi

# --- PyTorch on the same GPU ----------------------------------------------------------------------
torch_note=""
if [ "$DEVICE" = cpu ]; then
  torch_note="skipped on cpu"
elif [ "$SKIP_TORCH" = 1 ]; then
  torch_note="skipped (--skip-torch)"
else
  say "PyTorch on $DEVICE (mBERT-sized steps)"
  python3 torch_bench.py --device "$DEVICE" >"$OUT/torch.json" 2>"$OUT/torch.err" || torch_note="torch_bench.py failed (out/torch.err)"
fi

# --- one JSON summary -------------------------------------------------------------------------
python3 - "$OUT" "$DEVICE" "$missing" "$LD_EXTRA" "$bench_note" "$torch_note" <<'PY'
import json, os, sys
out, device, missing, ld_extra, bench_note, torch_note = sys.argv[1:7]

def read(name, default=""):
    p = os.path.join(out, name)
    return open(p, errors="replace").read() if os.path.exists(p) else default

def tail(text, n=15):
    return text.strip().splitlines()[-n:]

def rc_and_seconds(name):
    parts = read(name).split()
    if not parts:
        return None, None
    return int(parts[0]), (int(parts[1]) / 1000 if len(parts) > 1 else None)

summary = {"device": device}
gpu = read("gpu.txt").strip()
summary["gpu"] = gpu if gpu and "fail" not in gpu.lower() and "not found" not in gpu.lower() else None
summary["libraries"] = {"searched": [d for d in ld_extra.split(":") if d],
                        "missing": missing.split()}

rc, sec = rc_and_seconds("verify.rc")
v = {"exit": rc, "seconds": sec}
try:
    rep = json.loads(read("verify.json"))
    v["path"] = rep["path"]
    v["tolerances"] = rep["tolerances"]
    v["dumps"] = {d["name"]: {"mode": d["mode"], "status": d["status"], "compared": d["compared"],
                              "failed": len(d["failures"]), "first_failures": d["failures"][:3],
                              "error": d["error"]} for d in rep["dumps"]}
    v["passed"] = rc == 0
except Exception as e:  # no JSON: the binary did not start or the device did not open
    v["passed"] = False
    v["error"] = tail(read("verify.err") or str(e))
summary["verify_golden"] = v

if os.path.exists(os.path.join(out, "sweep.rc")):
    rc, sec = rc_and_seconds("sweep.rc")
    summary["sweep"] = {"exit": rc, "seconds": sec, "passed": rc == 0,
                        "status": tail(read("sweep-status.txt"), 12),
                        "log_tail": tail(read("sweep.log"), 8 if rc == 0 else 30)}
else:
    summary["sweep"] = {"passed": None, "note": "skipped (--skip-sweep)"}

if bench_note:
    summary["bench"] = {"note": bench_note}
else:
    rc, _ = rc_and_seconds("bench.rc")
    summary["bench"] = {"exit": rc, "output": tail(read("bench.log"), 40)}

if torch_note:
    summary["torch"] = {"note": torch_note, "stderr": tail(read("torch.err"), 10)}
else:
    try:
        summary["torch"] = json.loads(read("torch.json"))
    except Exception:
        summary["torch"] = {"note": "no JSON from torch_bench.py", "stderr": tail(read("torch.err"), 10)}

summary["passed"] = bool(summary["verify_golden"]["passed"]) and summary["sweep"].get("passed") is not False
print(json.dumps(summary, indent=2))
sys.exit(0 if summary["passed"] else 1)
PY
