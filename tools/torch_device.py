#!/usr/bin/env python3
"""The PyTorch side of `primer bench` on any device and model size: runs the reference's
benchmark (../shared/reference/torch_ref.py, imported by path and left unchanged) with its model
and batches moved to --device and one more model size, and adds each step's peak memory.

torch_ref.py builds everything on the CPU and knows the sizes `tiny` and `minilm`. Here its
`build_state` and `make_batch` are wrapped so that the same weights (initialised on the CPU, as
there) and the same batches go to the device, and `mbert` (bert-base-multilingual-cased's shape,
random init) joins its presets. Its steps end in `loss.item()`, which waits for the device, so
its timing stays right on a GPU.

--precision (primer bench's) sets the matrix products' arithmetic: fp32 (the default: full
fp32, TF32 off, as candle's), tf32 (TF32 allowed in cuBLAS and cuDNN on CUDA; a CPU has none
and runs fp32), bf16 (the forward and the loss under torch.autocast(device, bfloat16), with
fp32 master weights and AdamW; backward and the optimiser step outside it, as autocast is
meant to be used). torch_ref.py's steps call its forward functions by their module names, so
those are wrapped (`set_precision`): torch_ref.py itself stays unchanged.

    python tools/torch_device.py --torch-ref PATH [--device cuda:0] [--size mbert] \\
        [--precision bf16] \\
        -- [torch_ref.py benchmark flags: --batch --seq --threads --steps --mode --variant ...]

Prints torch_ref.py's JSON lines, each with `device`, `precision` (the one that ran),
`peak_memory_bytes` and `memory_kind` added. Exit status 3, with the reason on the last line of stderr, when torch is not installed
or has no such device (primer bench then reports the PyTorch side as not run, and why).
tools/bench_pe.py uses `load_torch_ref`, `prepare`, `set_precision` and `measure` the same way.
"""

import argparse
import functools
import importlib.util
import json
import sys

# Sizes torch_ref.py has no preset for (its own: tiny, minilm). primer's src/bench/workload.rs
# has the same table; a unit test there reads this line.
SIZES = {
    "mbert": dict(vocab_size=119547, hidden_size=768, num_hidden_layers=12,
                  num_attention_heads=12, intermediate_size=3072),
}

UNAVAILABLE = 3

PRECISIONS = ("fp32", "tf32", "bf16")

# The forward functions of torch_ref.py that its steps (and bench_pe.py's) call by module name:
# under bf16 each runs under autocast. encode is the encoder; the others are the adapter, the
# head and the loss, so a step's whole forward and loss are covered and nothing else is.
FORWARD_FUNCTIONS = ("encode", "adapter_fn", "head_fn", "tag_loss")


def unavailable(reason):
    print(reason, file=sys.stderr)
    sys.exit(UNAVAILABLE)


def load_torch_ref(path):
    spec = importlib.util.spec_from_file_location("torch_ref", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def import_torch():
    try:
        import torch
        import transformers  # noqa: F401  (torch_ref.py builds its BERT with it)
    except ImportError as e:
        unavailable(f"PyTorch is not usable in {sys.executable}: {e}")
    return torch


def prepare(tr, device, size):
    """Moves tr's model and batches to `device` and sets the preset `size` may need; returns the
    torch.device. Exits with UNAVAILABLE when this torch has no such device."""
    torch = import_torch()
    tr.PRESETS.update(SIZES)
    if size not in tr.PRESETS:
        raise SystemExit(f"unknown size {size!r} (known: {', '.join(sorted(tr.PRESETS))})")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            unavailable(f"torch {torch.__version__} has no CUDA device "
                        "(torch.cuda.is_available() is False)")
        if (dev.index or 0) >= torch.cuda.device_count():
            unavailable(f"torch sees {torch.cuda.device_count()} CUDA devices, not {device}")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    elif dev.type != "cpu":
        unavailable(f"device {device!r}: only cpu and cuda:N are compared")
    if dev.type == "cpu":
        return dev
    build_state, make_batch = tr.build_state, tr.make_batch

    def build_state_on(args, n_heads):
        st = build_state(args, n_heads)
        for m in (st.enc, st.adapter, st.heads):
            m.to(dev)
        return st

    def make_batch_on(*a, **kw):
        return {k: v.to(dev) for k, v in make_batch(*a, **kw).items()}

    # torch_ref's functions look these names up in its module at call time.
    tr.build_state, tr.make_batch = build_state_on, make_batch_on
    return dev


def set_precision(tr, dev, precision):
    """Makes torch_ref.py's steps compute in `precision` on `dev` and returns the precision that
    runs there: "tf32" only on CUDA (a CPU has no TF32 and runs fp32), as primer resolves it."""
    import torch
    if precision not in PRECISIONS:
        raise SystemExit(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    if dev.type == "cuda":
        tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if precision == "bf16":
        # Wrapping the forward functions, not the whole step: backward, the inner loops'
        # updates and AdamW stay outside autocast, on the fp32 master weights, as in primer.
        # (PyTorch's CPU autocast list, like its CUDA one, casts matmul/linear/SDPA to bf16.)
        def autocast(fn):
            @functools.wraps(fn)
            def run(*a, **kw):
                with torch.autocast(dev.type, dtype=torch.bfloat16):
                    return fn(*a, **kw)
            return run
        for name in FORWARD_FUNCTIONS:
            setattr(tr, name, autocast(getattr(tr, name)))
        return "bf16"
    return "tf32" if precision == "tf32" and dev.type == "cuda" else "fp32"


def measure(dev, run):
    """run() -> result dict, with the step's peak memory added: on a GPU torch's allocator peak
    over the run (weights, optimiser state, activations), on the CPU the process's peak RSS so
    far (not reset between modes)."""
    import torch
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    res = run()
    res["device"] = str(dev)
    if dev.type == "cuda":
        res["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(dev))
        res["memory_kind"] = "cuda_allocator_peak"
    else:
        import resource
        res["peak_memory_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        res["memory_kind"] = "process_peak_rss"
    return res


def device_name(dev):
    import platform
    import torch
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return platform.processor() or platform.machine()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ours, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torch-ref", required=True, help="the reference script, torch_ref.py")
    ap.add_argument("--device", default="cpu", help="cpu or cuda:N")
    ap.add_argument("--size", default="minilm", help="tiny, minilm (its presets) or mbert")
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS,
                    help="the matrix products' arithmetic (see above)")
    a = ap.parse_args(ours)
    import_torch()
    tr = load_torch_ref(a.torch_ref)
    dev = prepare(tr, a.device, a.size)
    precision = set_precision(tr, dev, a.precision)
    args = tr.parse(rest)
    args.preset = a.size
    if args.check or args.dump:
        raise SystemExit("torch_device.py runs the benchmark only (no --check, --dump)")
    import torch
    import transformers
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    # The first line as torch_ref.py prints it, with the device.
    print(json.dumps(dict(torch=torch.__version__, transformers=transformers.__version__,
                          threads=torch.get_num_threads(), device=str(dev),
                          device_name=device_name(dev), preset=args.preset,
                          precision=precision)), flush=True)
    for mode in args.mode.split(","):
        for variant in (args.variant.split(",") if mode == "meta-pe" else [""]):
            res = measure(dev, lambda: tr.bench_one(args, mode, variant))
            res["precision"] = precision
            print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
