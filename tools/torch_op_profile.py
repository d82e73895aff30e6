#!/usr/bin/env python3
"""Where the PyTorch reference's training step spends its time, for `primer bench --profile`.

Runs one of the reference's steps (`../shared/reference/torch_ref.py`, imported by path, not
copied) on the bench's MiniLM-sized random model under `torch.profiler` and prints one JSON
line: the step's wall time and the ops' self CPU time per step, grouped the way primer's own
breakdown groups them (GEMMs by shape, attention core, layer norm, GELU, softmax, loss,
embeddings, optimiser, other). Needs no network: the model is randomly initialised.

    python tools/torch_op_profile.py --step full --threads 2 --steps 3
    python tools/torch_op_profile.py --step meta-pe --threads 2 --steps 3
"""
import argparse
import importlib.util
import json
import pathlib
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_REFERENCE = HERE.parent.parent / "shared" / "reference" / "torch_ref.py"

# aten op name -> primer's op kind (the labels of primer::op_timing::OpKind::label).
KINDS = {
    "aten::addmm": "GEMM",
    "aten::mm": "GEMM",
    "aten::bmm": "GEMM",
    "aten::baddbmm": "GEMM",
    "aten::native_layer_norm": "layer norm",
    "aten::native_layer_norm_backward": "layer norm",
    "aten::gelu": "GELU",
    "aten::gelu_backward": "GELU",
    "aten::_softmax": "softmax",
    "aten::_softmax_backward_data": "softmax",
    "aten::_log_softmax": "cross-entropy loss",
    "aten::_log_softmax_backward_data": "cross-entropy loss",
    "aten::nll_loss_forward": "cross-entropy loss",
    "aten::nll_loss_backward": "cross-entropy loss",
    "aten::embedding": "embeddings",
    "aten::embedding_dense_backward": "embeddings",
    "aten::embedding_backward": "embeddings",
}


def load_reference(path):
    spec = importlib.util.spec_from_file_location("torch_ref", path)
    if spec is None or spec.loader is None:
        sys.exit(f"cannot import the PyTorch reference {path} (pass --reference)")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def kind_of(ev):
    """primer's op kind of a profiler event, from its name and its ancestors."""
    parent = ev.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):
            return "optimiser (AdamW)"
        parent = parent.cpu_parent
    if "scaled_dot_product" in ev.name or "flash_attention" in ev.name:
        return "attention core"
    return KINDS.get(ev.name, "other")


def gemm_shape(ev):
    """[m, k, n] (or [batch, m, k, n] for batched products) of a GEMM event."""
    s = [x for x in ev.input_shapes if x]
    if ev.name == "aten::addmm" and len(s) >= 3:
        (m, k), (_, n) = s[1], s[2]
        return [m, k, n]
    if ev.name == "aten::mm" and len(s) >= 2:
        (m, k), (_, n) = s[0], s[1]
        return [m, k, n]
    if ev.name == "aten::bmm" and len(s) >= 2:
        (b, m, k), (_, _, n) = s[0], s[1]
        return [b, m, k, n]
    if ev.name == "aten::baddbmm" and len(s) >= 3:
        (b, m, k), (_, _, n) = s[1], s[2]
        return [b, m, k, n]
    return []


def gemm_flops(shape):
    if len(shape) == 3:
        m, k, n = shape
        return 2.0 * m * k * n
    if len(shape) == 4:
        b, m, k, n = shape
        return 2.0 * b * m * k * n
    return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default=str(DEFAULT_REFERENCE),
                    help="torch_ref.py (default: ../shared/reference/torch_ref.py)")
    ap.add_argument("--step", choices=["full", "meta-pe"], required=True,
                    help="full: full fine-tuning step; meta-pe: meta-PE outer step "
                         "(cached variant, same support)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="profiled steps")
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()

    ref = load_reference(a.reference)
    args = ref.parse(["--minilm", "--threads", str(a.threads), "--mode", a.step,
                      "--variant", "cached", "--support", "same",
                      "--warmup", str(a.warmup), "--steps", str(a.steps)])
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    st = ref.build_state(args, ref.n_heads_for(a.step, args))
    tr = ref.make_trainer(st, a.step, "cached" if a.step == "meta-pe" else "", args)
    dg = ref.DataGen(args, st.enc.config.vocab_size)
    meta = ref.is_meta(a.step)
    data = [dg.meta_batches() if meta else dg.std_batch() for _ in range(a.warmup + a.steps)]
    for k in range(a.warmup):
        tr.step(data[k])
    times = []
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for k in range(a.warmup, a.warmup + a.steps):
            t0 = time.perf_counter()
            tr.step(data[k])
            times.append((time.perf_counter() - t0) * 1e3)

    groups = {}
    for ev in prof.events():
        us = ev.self_cpu_time_total
        if us <= 0:
            continue
        kind = kind_of(ev)
        shape = gemm_shape(ev) if kind == "GEMM" else []
        g = groups.setdefault((kind, tuple(shape)), dict(calls=0, us=0.0, flops=0.0))
        g["calls"] += 1
        g["us"] += us
        g["flops"] += gemm_flops(shape)
    n = len(times)
    ops = [dict(kind=kind, shape=list(shape), calls=g["calls"] / n, ms=g["us"] / 1e3 / n,
                flops=g["flops"] / n)
           for (kind, shape), g in sorted(groups.items(), key=lambda kv: -kv[1]["us"])]
    print(json.dumps(dict(step=a.step, threads=torch.get_num_threads(),
                          torch=torch.__version__,
                          cpu_capability=torch.backends.cpu.get_cpu_capability(),
                          mkldnn=torch.backends.mkldnn.is_available(),
                          step_ms=sum(times) / n, steps=n, ops=ops)), flush=True)


if __name__ == "__main__":
    main()
