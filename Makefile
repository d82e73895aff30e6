# primer — the first two commands on a fresh clone: `make demo` and `make test`.
# Everything builds in the dev profile (dependencies optimised, see Cargo.toml) so that tests,
# the demo and the benchmarks share one build.

CARGO ?= cargo
# cargo locates (and if needed rebuilds) the binary itself, so a CARGO_TARGET_DIR set in the
# user's shell (a shared build cache) works too; a path like target/debug/primer would not.
PRIMER = $(CARGO) run --quiet --bin primer --

.PHONY: all build test demo demo-quick bench lint fmt clean-results check-cuda

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

fmt:
	$(CARGO) fmt

## Compile the CUDA path (needs the CUDA toolkit; no GPU needed to compile). candle's kernel
## build turns compute capability 90 into sm_90a, which needs CUDA >= 12; with Debian's CUDA 11.8
## (nvidia-cuda-toolkit) the default 80 builds PTX that Hopper GPUs run through the driver's JIT.
## With CUDA >= 12 on an H100/H200, use `make check-cuda CUDA_COMPUTE_CAP=90`.
CUDA_COMPUTE_CAP ?= 80
check-cuda:
	CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) $(CARGO) build --release --features cuda
