# primer — the first two commands on a fresh clone: `make demo` and `make test`.
# Everything builds in the dev profile (dependencies optimised, see Cargo.toml) so that tests,
# the demo and the benchmarks share one build.

CARGO ?= cargo
# cargo locates (and if needed rebuilds) the binary itself, so a CARGO_TARGET_DIR set in the
# user's shell (a shared build cache) works too; a path like target/debug/primer would not.
PRIMER = $(CARGO) run --quiet --bin primer --
# Where cargo puts its builds: CARGO_TARGET_DIR when the shell sets it.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

.PHONY: all build test demo demo-quick bench lint doc fmt clean-results check-cuda check-cuda-types gpu-bundle gpu-bundle-cpu

all: build

build:
	$(CARGO) build --bins

## Run the whole test suite (what CI runs). Tests that need ../shared say when they skip.
test:
	$(CARGO) test --no-fail-fast -- --test-threads=2

## The embedded default: a small sweep on CPU over committed WikiAnn slices with a tiny model;
## tables and figures land in results/demo/.
demo:
	$(PRIMER) demo

## The same, shortened (seconds-scale), as the CLI test runs it.
demo-quick:
	$(PRIMER) demo --quick

## Speed benchmarks, printed as ratios against the PyTorch reference run side by side
## (needs a Python with torch + transformers + safetensors: set TORCH_PYTHON, see README).
bench:
	$(PRIMER) bench

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(MAKE) doc

## The API docs of primer itself (target/doc/primer/), private items included: the crate is a
## tool, and most of its seams are crate-private. Broken links fail (a renamed item whose docs
## still name the old one); links from public to private items are fine here.
doc:
	RUSTDOCFLAGS="-D warnings -A rustdoc::private-intra-doc-links" $(CARGO) doc --no-deps --document-private-items

fmt:
	$(CARGO) fmt

## The CUDA build (no GPU needed to compile; see tools/cuda-build.sh). Without nvcc on the PATH
## the CUDA 13.0 compiler, headers and libraries come from PyPI into .cuda-venv/ (1.2 GB).
## Release build for compute capability 90 (H100/H200; override: CUDA_COMPUTE_CAP=80) in
## target/cuda/, linked against a generated libcuda stub; ends with target/cuda/primer-cuda.zst.
CUDA_COMPUTE_CAP ?= 90
check-cuda:
	CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) tools/cuda-build.sh build

## Type-check --features cuda (what CI runs: candle's kernels are compiled, nothing is linked).
check-cuda-types:
	CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) tools/cuda-build.sh check

## What tools/gpu-check.sh carries to a GPU machine, in one archive (<= 64 MiB): the CUDA
## binary, the golden dumps, a tiny sweep and its data (see tools/gpu-bundle.sh).
GOLDEN_DIR ?= ../shared/golden
gpu-bundle: check-cuda
	GOLDEN_DIR=$(GOLDEN_DIR) tools/gpu-bundle.sh make target/cuda/primer-cuda target/gpu-bundle/primer-gpu-check.tar.xz

## The same bundle around the CPU binary, unpacked and run with `gpu-check.sh --device cpu`:
## tests the bundle's layout, size and the check itself where no GPU is at hand.
gpu-bundle-cpu: build
	GOLDEN_DIR=$(GOLDEN_DIR) tools/gpu-bundle.sh make $(TARGET_DIR)/debug/primer $(TARGET_DIR)/gpu-bundle-cpu/primer-gpu-check.tar.xz
	tools/gpu-bundle.sh test $(TARGET_DIR)/gpu-bundle-cpu/primer-gpu-check.tar.xz cpu >/dev/null
