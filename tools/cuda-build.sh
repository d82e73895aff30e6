#!/usr/bin/env bash
# The CUDA build of primer on a machine with no CUDA toolkit and no GPU (or with them).
#
#   tools/cuda-build.sh check   type-check `--features cuda` (runs candle's kernel build: needs nvcc)
#   tools/cuda-build.sh build   build (cargo profile `cuda`) for one compute capability, linked against a
#                               generated libcuda stub, stripped and compressed to carry
#   tools/cuda-build.sh env     print the exports the two above use (for a shell: eval "$(...)")
#
# Settings (environment):
#   CUDA_COMPUTE_CAP   compute capability the kernels are built for (default 90: H100/H200;
#                      CUDA 13 builds for 75 and newer only)
#   NVCC               an nvcc to use; else `nvcc` on the PATH; else the toolkit wheels from PyPI
#                      are installed into CUDA_VENV
#   CUDA_VENV          where those wheels go (default .cuda-venv, ignored by git)
#   CUDA_TARGET_DIR    cargo target dir of that build (default target/cuda, so that the CPU
#                      build in target/ stays warm)
#   CARGO              cargo command (default cargo)
#
# Why each step is there:
# - The toolkit is pinned to CUDA 13.0 because the driver on the GPU machines lent here is 580
#   (CUDA 13.0): candle's kernels travel as PTX, and a driver cannot load PTX from a newer nvcc
#   (CUDA_ERROR_UNSUPPORTED_PTX_VERSION). cudarc 0.19.10 knows 13.0 (it panics on versions it
#   does not know, e.g. 13.5); CUDARC_CUDA_VERSION is set from the nvcc in use.
# - candle asks cudarc for `dynamic-linking`, so the final link needs libcuda.so, which only the
#   driver ships. A stub with the soname libcuda.so.1 defining exactly the driver functions the
#   binary references stands in at link time; the real driver is loaded at run time. The list is
#   read off the binary itself (a first link that leaves them unresolved), so it stays right when
#   dependencies change; the second link has no such allowance and fails on anything missing.
# - Link arguments go on the final crate only (`cargo rustc -- ...`): RUSTFLAGS would rebuild
#   every crate whenever they change.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

CARGO="${CARGO:-cargo}"
CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
CUDA_VENV="${CUDA_VENV:-$ROOT/.cuda-venv}"
CUDA_TARGET_DIR="${CUDA_TARGET_DIR:-$ROOT/target/cuda}"
# The carried binary must fit what travels to a device machine.
MAX_CARRY_BYTES=$((64 * 1024 * 1024))

# One place for the wheel versions (CUDA 13.0 throughout; see the header for why 13.0).
# Compiling candle's kernels (all a type-check needs): nvcc, its front end and NVVM, the
# runtime and C++ library headers; about 100 MB to download.
CUDA_COMPILE_WHEELS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
# Linking the binary besides: the libraries cudarc asks for; about 570 MB more.
CUDA_LINK_WHEELS=(
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35
)
# The CUDA libraries the binary links against besides the driver (cudarc and candle-kernels ask
# for these by their unversioned names; the wheels ship versioned files only).
LINKED_LIBS=(cudart cublas cublasLt curand nvrtc)

die() {
  echo "cuda-build: error: $*" >&2
  exit 1
}
say() { echo "cuda-build: $*" >&2; }

# The Python that creates the venv: any python3 >= 3.9 with venv and pip.
find_python() {
  local py
  for py in "${PYTHON:-}" python3 python3.12 python3.11 python3.10 python; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import venv, sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
      echo "$py"
      return 0
    fi
  done
  return 1
}

# Installs the given wheels into CUDA_VENV unless they are there already (the stamp file lists
# what this script installed).
ensure_venv() {
  local stamp="$CUDA_VENV/.primer-cuda-wheels" missing=() w py
  for w in "$@"; do
    grep -qxF "$w" "$stamp" 2>/dev/null || missing+=("$w")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  if [ ! -x "$CUDA_VENV/bin/python" ]; then
    py="$(find_python)" || die "no nvcc on the PATH and no python3 (>= 3.9, with venv) to install the CUDA toolkit wheels from PyPI.
  Fix: install python3 with venv and pip, or a CUDA toolkit (nvcc on the PATH, or NVCC=/path/to/nvcc)."
    rm -rf "$CUDA_VENV"
    "$py" -m venv "$CUDA_VENV" || die "could not create the venv $CUDA_VENV with $py (is python3-venv installed?)"
  fi
  say "installing CUDA 13.0 wheels from PyPI into $CUDA_VENV: ${missing[*]}"
  if ! "$CUDA_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
      "${missing[@]}"; then
    die "pip could not install the CUDA toolkit wheels (${missing[*]}) from PyPI.
  Is the network (pypi.org) reachable? Without it, install a CUDA toolkit and put nvcc on the PATH
  (or set NVCC=/path/to/nvcc), then run this again."
  fi
  printf '%s\n' "${missing[@]}" >>"$stamp"
}

# Sets NVCC, CUDA_ROOT (the toolkit's root: bin/, include/, lib/) and the variables candle's
# kernel build (cudaforge) and cudarc read.
setup_toolkit() {
  local need="$1"
  if [ -n "${NVCC:-}" ]; then
    [ -x "$NVCC" ] || die "NVCC=$NVCC is not an executable file"
  elif command -v nvcc >/dev/null 2>&1; then
    NVCC="$(command -v nvcc)"
  else
    if [ "$need" = link ]; then
      ensure_venv "${CUDA_COMPILE_WHEELS[@]}" "${CUDA_LINK_WHEELS[@]}"
    else
      ensure_venv "${CUDA_COMPILE_WHEELS[@]}"
    fi
    local found
    found="$(ls "$CUDA_VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n 1 || true)"
    [ -n "$found" ] || die "the wheels are installed in $CUDA_VENV but no nvidia/cu13/bin/nvcc is there; delete $CUDA_VENV and run again"
    NVCC="$found"
  fi
  NVCC="$(cd "$(dirname "$NVCC")" && pwd)/$(basename "$NVCC")"
  CUDA_ROOT="$(dirname "$(dirname "$NVCC")")"
  local release
  release="$("$NVCC" --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\),.*/\1 \2/p')"
  [ -n "$release" ] || die "could not read the CUDA version from \`$NVCC --version\`"
  # cudarc's spelling of the version: 13.0 -> 13000.
  local major minor
  read -r major minor <<<"$release"
  CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-${major}0${minor}0}"
  [ "$major" -ge 12 ] || die "nvcc $major.$minor is too old: candle's kernels for compute capability 90 need CUDA >= 12"
  # cudaforge finds nvcc through NVCC; cudarc's version check runs `nvcc` from the PATH; both
  # read CUDA_ROOT/CUDA_HOME for the include and library folders.
  export NVCC CUDA_ROOT CUDA_HOME="$CUDA_ROOT" CUDA_PATH="$CUDA_ROOT" CUDARC_CUDA_VERSION CUDA_COMPUTE_CAP
  export PATH="$CUDA_ROOT/bin:$PATH"
  say "nvcc $major.$minor at $NVCC; compute capability $CUDA_COMPUTE_CAP; CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION"
}

# The folder holding the CUDA libraries' unversioned names (what `-l` looks for).
cuda_lib_dir() {
  local d
  for d in "$CUDA_ROOT/lib64" "$CUDA_ROOT/lib" "$CUDA_ROOT/targets/x86_64-linux/lib"; do
    if ls "$d"/libcudart.so* >/dev/null 2>&1; then
      echo "$d"
      return 0
    fi
  done
  die "no libcudart.so* under $CUDA_ROOT/{lib64,lib,targets/x86_64-linux/lib}"
}

# A folder of links lib<name>.so -> the toolkit's versioned file, for the final link.
make_link_dir() {
  local link_dir="$1" lib_dir name file
  lib_dir="$(cuda_lib_dir)"
  mkdir -p "$link_dir"
  for name in "${LINKED_LIBS[@]}"; do
    file="$(ls "$lib_dir/lib$name.so" "$lib_dir"/lib"$name".so.[0-9]* 2>/dev/null | head -n 1 || true)"
    [ -n "$file" ] || die "no lib$name.so* in $lib_dir (install the matching nvidia-* wheel or toolkit component)"
    ln -sfn "$file" "$link_dir/lib$name.so"
  done
}

# Builds $link_dir/libcuda.so.1 (and the libcuda.so link) defining the given symbols; each
# returns CUDA_ERROR_STUB_LIBRARY (34), as NVIDIA's own stubs do, should it ever be called.
make_cuda_stub() {
  local link_dir="$1" symbols_file="$2" src="$1/libcuda-stub.c" sym
  {
    echo "/* Generated by tools/cuda-build.sh: link-time stand-in for the driver (never carried). */"
    while read -r sym; do
      [ -n "$sym" ] && echo "int $sym(void) { return 34; }"
    done <"$symbols_file"
  } >"$src"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link_dir/libcuda.so.1" "$src" \
    || die "could not compile the libcuda stub ($src)"
  ln -sfn libcuda.so.1 "$link_dir/libcuda.so"
}

# The driver functions a binary leaves undefined: cu<Upper>… names that none of the linked
# toolkit libraries define (cuda*/cublas*/curand* start with a lower-case letter after `cu`).
driver_symbols() {
  local binary="$1" link_dir="$2" defined
  defined="$(for name in "${LINKED_LIBS[@]}"; do nm -D --defined-only "$link_dir/lib$name.so" | awk '{print $3}'; done | sed 's/@.*//' | sort -u)"
  nm -D --undefined-only "$binary" | awk '{print $2}' | sed 's/@.*//' | grep -E '^cu[A-Z]' | sort -u \
    | comm -23 - <(echo "$defined")
}

cmd_check() {
  setup_toolkit compile
  # The type-check shares the CPU build's target dir: artefacts built with other features carry
  # other hashes, so nothing of the CPU build is invalidated and crates that don't depend on
  # candle are reused.
  say "cargo check --features cuda --all-targets"
  nice -n "${NICE:-10}" $CARGO check --features cuda --all-targets --locked
}

# Builds and links binary $1 of the crate in the current directory (profile `cuda`, see
# Cargo.toml for why not `release`; the remaining
# arguments go to `cargo rustc`, e.g. --features cuda) in CARGO_TARGET_DIR, against a libcuda
# stub in $link_dir generated from the driver functions the binary references.
link_with_stub() {
  local name="$1" link_dir="$2"
  shift 2
  local bin="$CARGO_TARGET_DIR/cuda/$name" symbols="$link_dir/driver-symbols.txt"
  rm -rf "$link_dir"
  make_link_dir "$link_dir"
  : >"$symbols"
  make_cuda_stub "$link_dir" "$symbols"

  say "first link: build with the driver's functions left unresolved, to list them"
  nice -n "${NICE:-10}" $CARGO rustc --profile cuda "$@" --bin "$name" -- \
    -L "native=$link_dir" -C link-arg=-Wl,--unresolved-symbols=ignore-in-object-files
  driver_symbols "$bin" "$link_dir" >"$symbols"
  [ -s "$symbols" ] || die "the first link left no driver (cu*) symbol unresolved: is --features cuda in effect?"
  say "$(wc -l <"$symbols") driver functions referenced; building the libcuda.so.1 stub"
  make_cuda_stub "$link_dir" "$symbols"

  say "final link against the stub (fails on any symbol still missing)"
  nice -n "${NICE:-10}" $CARGO rustc --profile cuda "$@" --bin "$name" -- -L "native=$link_dir"
  readelf -d "$bin" | grep -q 'NEEDED.*libcuda\.so\.1' || die "$bin does not record libcuda.so.1 as needed"
}

cmd_build() {
  setup_toolkit link
  command -v zstd >/dev/null 2>&1 || die "zstd is needed to compress the binary (apt-get install zstd)"
  local link_dir="$CUDA_TARGET_DIR/cuda-link" bin="$CUDA_TARGET_DIR/cuda/primer"
  export CARGO_TARGET_DIR="$CUDA_TARGET_DIR"
  link_with_stub primer "$link_dir" --locked --features cuda

  local carry="$CUDA_TARGET_DIR/primer-cuda" size
  strip -o "$carry" "$bin"
  zstd -q -19 -T0 -f "$carry" -o "$carry.zst"
  size="$(stat -c %s "$carry.zst")"
  [ "$size" -le "$MAX_CARRY_BYTES" ] || die "$carry.zst is $size bytes, over the $MAX_CARRY_BYTES that travel"
  # The binary must start on a machine without a GPU (CPU commands need no driver): here the
  # stub stands in for libcuda.so.1.
  LD_LIBRARY_PATH="$link_dir:$(cuda_lib_dir)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$carry" --version >/dev/null \
    || die "$carry does not start (with the stub and the toolkit's libraries on LD_LIBRARY_PATH)"
  {
    echo "nvcc: $("$NVCC" --version | sed -n 's/.*release /release /p')"
    echo "compute capability: $CUDA_COMPUTE_CAP"
    echo "needs at run time:"
    readelf -d "$bin" | sed -n 's/.*NEEDED.*\[\(.*\)\]/  \1/p'
  } >"$carry.txt"
  say "done: $carry.zst ($size bytes; stripped binary $(stat -c %s "$carry") bytes); run-time needs in $carry.txt"
  echo "$carry.zst"
}

cmd_env() {
  setup_toolkit link
  printf 'export NVCC=%q CUDA_ROOT=%q CUDA_HOME=%q CUDA_PATH=%q CUDARC_CUDA_VERSION=%q CUDA_COMPUTE_CAP=%q PATH=%q\n' \
    "$NVCC" "$CUDA_ROOT" "$CUDA_HOME" "$CUDA_PATH" "$CUDARC_CUDA_VERSION" "$CUDA_COMPUTE_CAP" "$PATH"
}

# Sourced (`. tools/cuda-build.sh`), the file only defines its functions.
[ "${BASH_SOURCE[0]}" = "$0" ] || return 0
cd "$ROOT"
case "${1:-}" in
  check) cmd_check ;;
  build) cmd_build ;;
  env) cmd_env ;;
  *)
    echo "usage: tools/cuda-build.sh check|build|env   (see the header of this file)" >&2
    exit 2
    ;;
esac
