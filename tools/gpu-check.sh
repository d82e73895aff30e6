#!/usr/bin/env bash
# The one-call GPU check: run from an unpacked `make gpu-bundle` archive on a machine with an
# NVIDIA GPU and no Rust, it runs the carried `primer` (built with --features cuda) and prints
# ONE JSON summary on stdout (progress goes to stderr, logs to out/):
#
#   gpu           nvidia-smi's name, driver and memory (when nvidia-smi is there)
#   libraries     where the CUDA libraries the binary needs were found (or which are missing)
#   verify_golden `primer verify-golden golden golden-pe --device DEV --json` (the PyTorch dumps)
#   sweep         a tiny sweep (tiny-sweep.toml) with `--devices DEV --per-device 2`
#   bench         `primer bench --device DEV --size mbert` (fp32; random L12/H768, vocab 119547,
#                 batch 32 x seq 128): per step kind ms, tokens/s and peak memory, beside PyTorch on
#                 the same device (torch_ref.py through torch_device.py, bench_pe.py for LoRA) when
#                 that machine's python3 (or $TORCH_PYTHON) has torch with CUDA; else the bench
#                 says why not. The whole bench JSON stays in out/bench.json.
#   bench_bf16    the same bench with --precision bf16 (primer's products in bf16, PyTorch's
#                 forward and loss under torch.autocast): what a run costs at its default
#                 precision on a GPU (`auto` = bf16 there). out/bench-bf16.json. Not with
#                 --skip-bf16. PRIMER_BENCH_ARGS (e.g. "--steps 3") goes to both benches.
#
#   usage: ./gpu-check.sh [--device cuda:0] [--skip-torch] [--skip-sweep] [--skip-bf16]
#
# BENCH_TIMEOUT_S (default 200; 0 = none) bounds each bench: a device machine lent here runs one
# command for at most 10 minutes, and a bench killed by it would take the whole summary with
# it; a bench stopped by this limit is reported as such, with its log's tail, and the rest of
# the JSON stands.
#
# Exit status: 0 when verify-golden, the sweep and the benches passed, 1 otherwise (the JSON
# says which). `--device cpu` runs the same check on a machine without a GPU (how `make
# gpu-bundle-cpu` tests the bundle); the benches run there at the tiny size without PyTorch.
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
cd "$HERE"
DEVICE="cuda:0"
SKIP_TORCH=0
SKIP_SWEEP=0
SKIP_BF16=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --device=*) DEVICE="${1#*=}"; shift ;;
    --skip-torch) SKIP_TORCH=1; shift ;;
    --skip-sweep) SKIP_SWEEP=1; shift ;;
    --skip-bf16) SKIP_BF16=1; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
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

# --- primer bench on the device, beside PyTorch on the same device ---------------------------------
# On the CPU (the bundle's test in CI) the tiny size, one step each and no PyTorch: about a second
# per precision, and the benches' JSON reaches the summary the same way.
if [ "$DEVICE" = cpu ]; then
  bench_args=(--size tiny --steps 1 --run-batches 2 --run-epochs 1 --no-torch)
else
  bench_args=(--size mbert)
  [ "$SKIP_TORCH" = 0 ] || bench_args+=(--no-torch)
fi
BENCH_TIMEOUT_S="${BENCH_TIMEOUT_S:-200}"
case "$BENCH_TIMEOUT_S" in
  ''|*[!0-9]*) echo "gpu-check: BENCH_TIMEOUT_S=$BENCH_TIMEOUT_S is not a number of seconds (0 = no limit)" >&2; exit 2 ;;
esac
export BENCH_TIMEOUT_S
bench_limit=()
[ "$BENCH_TIMEOUT_S" -eq 0 ] || bench_limit=(timeout "$BENCH_TIMEOUT_S")
# run_bench PRECISION NAME: out/NAME.json, .log and .rc (exit status and milliseconds; 124 when
# BENCH_TIMEOUT_S stopped it).
run_bench() {
  say "primer bench on $DEVICE --precision $1 ${bench_args[*]} ${PRIMER_BENCH_ARGS:-}"
  local t0 rc
  t0=$(date +%s%N)
  # shellcheck disable=SC2086  # PRIMER_BENCH_ARGS is a list of flags
  "${bench_limit[@]}" "$PRIMER" bench --device "$DEVICE" --precision "$1" "${bench_args[@]}" --json "$OUT/$2.json" \
    --torch-python "${TORCH_PYTHON:-python3}" --torch-ref torch_ref.py \
    --torch-device-runner torch_device.py --torch-pe-bench bench_pe.py \
    ${PRIMER_BENCH_ARGS:-} >"$OUT/$2.log" 2>&1
  rc=$?
  echo "$rc $(( ($(date +%s%N) - t0) / 1000000 ))" >"$OUT/$2.rc"
}
# fp32 first: the numbers comparable with earlier checks and `make bench`; then a GPU run's
# default precision.
run_bench fp32 bench
[ "$SKIP_BF16" = 1 ] || run_bench bf16 bench-bf16

# --- one JSON summary -------------------------------------------------------------------------
python3 - "$OUT" "$DEVICE" "$missing" "$LD_EXTRA" <<'PY'
import json, os, sys
out, device, missing, ld_extra = sys.argv[1:5]

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

def mib(side):
    b = side and side.get("peak_memory_bytes")
    return round(b / 2**20) if b else None

def rounded(x, digits=1):
    return None if x is None else round(x, digits)

def bench(name):
    rc, sec = rc_and_seconds(name + ".rc")
    b = {"exit": rc, "seconds": sec, "passed": rc == 0}
    try:
        rep = json.loads(read(name + ".json"))
        # The rows in short (ms, tokens/s, MiB); the whole report is out/NAME.json.
        rows = {}
        for r in rep["rows"]:
            p, t = r["primer"] or {}, r["torch"] or {}
            rows[r["key"]] = {
                "label": r["label"], "tokens_per_step": r["tokens_per_step"],
                "primer_ms": rounded(p.get("median_ms"), 3),
                "primer_tokens_per_s": rounded(p.get("tokens_per_s"), 0),
                "primer_peak_mib": mib(p),
                "torch_ms": rounded(t.get("median_ms"), 3),
                "torch_tokens_per_s": rounded(t.get("tokens_per_s"), 0),
                "torch_peak_mib": mib(t),
                "ratio": rounded(r["ratio"], 3),
            }
        b.update({"device": rep["device"], "device_name": rep["device_name"],
                  "size": rep["size"], "precision": rep["precision"], "steps": rep["steps"],
                  "memory": rep["memory_note"], "torch": rep["torch"], "rows": rows})
    except Exception as e:  # no JSON: the bench failed before its report
        b["passed"] = False
        b["error"] = tail(read(name + ".log") or str(e), 30)
    if rc == 124:
        b["error"] = (f"stopped after BENCH_TIMEOUT_S={os.environ.get('BENCH_TIMEOUT_S')} s "
                      "before its report: raise BENCH_TIMEOUT_S, or shorten the bench with "
                      "PRIMER_BENCH_ARGS='--steps 3' (the log's tail says how far it got)")
    if rc != 0:
        b["log_tail"] = tail(read(name + ".log"), 30)
    return b

summary["bench"] = bench("bench")
if os.path.exists(os.path.join(out, "bench-bf16.rc")):
    summary["bench_bf16"] = bench("bench-bf16")
else:
    summary["bench_bf16"] = {"passed": None, "note": "skipped (--skip-bf16)"}

summary["passed"] = (bool(summary["verify_golden"]["passed"])
                     and summary["sweep"].get("passed") is not False
                     and summary["bench"]["passed"]
                     and summary["bench_bf16"].get("passed") is not False)
print(json.dumps(summary, indent=2))
sys.exit(0 if summary["passed"] else 1)
PY
