#!/usr/bin/env python3
"""PyTorch + HF peft side of primer's LoRA bench rows (issue 18): median wall-clock times of

  lora       one LoRA fine-tuning step: forward through a peft-LoRA BERT and the head, token
             cross-entropy, backward, one AdamW step on the LoRA factors and the head;
  meta-lora  one first-order meta-priming outer step with a LoRA inner loop (as
             tools/pe_golden.py --meta): per task, S plain SGD steps on fast LoRA factors and
             the task's head (one support batch reused), the query loss at (θp, adapted LoRA,
             adapted head), its gradients w.r.t. θp and LoRA summed over tasks, one AdamW step
             on θp ∪ LoRA; head_i := its adapted head.

The model, batches and optimiser settings are the existing bench's (../shared/reference/
torch_ref.py, imported by path): a random BERT of MiniLM's shape with `--minilm` (H 384, 6
layers, 12 heads, vocabulary 30522), batch 16 × seq 64, no dropout, AdamW (β 0.9/0.999, eps
1e-8, weight decay 0.01), the given thread count and one inter-op thread. LoRA is peft's with
primer's defaults: r 8, α 8, query and value of every layer, lora_dropout 0. Prints one JSON
line per mode ({"mode": ..., "median_ms": ..., ...}, the fields torch_ref.py prints, and the
peak memory), after a first line describing the versions.

`--size mbert` (or tiny, minilm) and `--device cuda:N` move the model and batches to a GPU and
change the model's size the way tools/torch_device.py does for torch_ref.py's own steps (exit
status 3 when torch, peft or the device is missing); `--precision fp32|tf32|bf16` sets the
matrix products' arithmetic the way it does there (bf16: the forward and the loss under
torch.autocast; each result line says the precision that ran).

    /work/venv-torch/bin/python tools/bench_pe.py --minilm --threads 2 --steps 5
"""

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_device  # noqa: E402  (beside this script, in tools/ and in the GPU bundle)

try:
    import torch
except ImportError:
    torch = None  # main() says so, with torch_device's exit status


def load_torch_ref(path):
    spec = importlib.util.spec_from_file_location("torch_ref", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def attach_lora(enc, args):
    """peft LoRA on the encoder (θp stays trainable in the wrapped modules); returns the model
    and its LoRA parameters in a fixed order."""
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                     target_modules=args.lora_targets.split(","), init_lora_weights="gaussian")
    model = get_peft_model(enc, cfg)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    theta_p = [p for n, p in model.named_parameters() if "lora_" not in n]
    return model, lora, theta_p


class LoraFinetune:
    """One fine-tuning step of LoRA + head (θp frozen)."""

    def __init__(self, tr, st, args):
        self.tr = tr
        self.model, self.lora, theta_p = attach_lora(st.enc, args)
        for p in theta_p:
            p.requires_grad_(False)
        for p in self.lora:
            p.requires_grad_(True)
        self.head = st.heads[0]
        self.params = self.lora + list(self.head.parameters())
        self.opt = tr.make_adamw(self.params, args)

    def step(self, b):
        self.opt.zero_grad(set_to_none=True)
        hidden = self.tr.encode(self.model, b)
        loss = self.tr.tag_loss(self.tr.head_fn(hidden, self.tr.pdict(self.head)), b["labels"])
        loss.backward()
        self.opt.step()
        return loss.item()


class MetaLora:
    """First-order meta priming with a LoRA inner loop. The inner loop adapts the LoRA factors
    in place (their outer values are restored after each task) and a fast copy of the head;
    θp takes no gradient there."""

    def __init__(self, tr, st, args):
        self.tr, self.st, self.a = tr, st, args
        self.model, self.lora, self.theta_p = attach_lora(st.enc, args)
        st.heads.requires_grad_(False)
        self.opt = tr.make_adamw(self.theta_p + self.lora, args)

    def step(self, tasks):
        tr, st, a = self.tr, self.st, self.a
        self.opt.zero_grad(set_to_none=True)
        outer = [p.detach().clone() for p in self.lora]
        total = 0.0
        for i, (support, query) in enumerate(tasks):
            with torch.no_grad():
                for p, v in zip(self.lora, outer):
                    p.copy_(v)
            fh = {k: p.detach().clone().requires_grad_(True)
                  for k, p in st.heads[i].named_parameters()}
            fast = self.lora + [fh[k] for k in tr.HEAD_KEYS]
            for p in self.theta_p:
                p.requires_grad_(False)
            for p in self.lora:
                p.requires_grad_(True)
            for s in range(a.inner_steps):
                b = support[s % len(support)]
                loss = tr.tag_loss(tr.head_fn(tr.encode(self.model, b), fh), b["labels"])
                grads = torch.autograd.grad(loss, fast)
                with torch.no_grad():
                    for t, g in zip(fast, grads):
                        t.sub_(a.inner_lr * g)
            # Query at (θp, adapted LoRA, adapted head): first-order gradients w.r.t. θp ∪ LoRA.
            for p in self.theta_p:
                p.requires_grad_(True)
            head_q = {k: v.detach() for k, v in fh.items()}
            loss_q = tr.tag_loss(tr.head_fn(tr.encode(self.model, query), head_q),
                                 query["labels"])
            grads = torch.autograd.grad(loss_q, self.theta_p + self.lora)
            tr.accumulate(self.theta_p + self.lora, grads)
            with torch.no_grad():
                for k, p in st.heads[i].named_parameters():
                    p.copy_(fh[k])
            total += loss_q.item()
        with torch.no_grad():
            for p, v in zip(self.lora, outer):
                p.copy_(v)
        self.opt.step()
        return total


def bench(tr, args, mode):
    meta = mode == "meta-lora"
    st = tr.build_state(args, args.tasks if meta else 1)
    trainer = (MetaLora if meta else LoraFinetune)(tr, st, args)
    dg = tr.DataGen(args, st.enc.config.vocab_size)
    n = args.warmup + args.steps
    data = [dg.meta_batches() if meta else dg.std_batch() for _ in range(n)]
    times, losses = [], []
    la0 = os.getloadavg()
    for k in range(n):
        t0 = time.perf_counter()
        losses.append(trainer.step(data[k]))
        dt = (time.perf_counter() - t0) * 1e3
        if k >= args.warmup:
            times.append(dt)
    la1 = os.getloadavg()
    return dict(
        config=args.preset, mode=mode, variant="", support=args.support if meta else "",
        batch=args.batch, seq=args.seq, threads=args.threads, attn=args.attn,
        lora=dict(r=args.lora_r, alpha=args.lora_alpha, targets=args.lora_targets.split(",")),
        inner_steps=args.inner_steps if meta else None, tasks=args.tasks if meta else None,
        warmup=args.warmup, steps=args.steps,
        median_ms=round(statistics.median(times), 2), min_ms=round(min(times), 2),
        max_ms=round(max(times), 2), times_ms=[round(t, 2) for t in times],
        first_loss=round(losses[0], 5), last_loss=round(losses[-1], 5),
        loadavg_before=[round(x, 2) for x in la0], loadavg_after=[round(x, 2) for x in la1],
        noisy=bool(max(times) / min(times) > 1.25 or max(la0[0], la1[0]) > args.threads + 0.5),
    )


def parse(argv=None):
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torch-ref", default=str(here.parent.parent / "shared/reference/torch_ref.py"),
                    help="the reference script whose model, batches and AdamW are used")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--tiny", dest="preset", action="store_const", const="tiny")
    g.add_argument("--minilm", dest="preset", action="store_const", const="minilm")
    g.add_argument("--size", dest="preset", choices=["tiny", "minilm", "mbert"],
                   help="the model size (mbert: tools/torch_device.py's SIZES)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda:N")
    ap.add_argument("--precision", default="fp32", choices=torch_device.PRECISIONS,
                    help="the matrix products' arithmetic (tools/torch_device.py's)")
    ap.add_argument("--mode", default="lora,meta-lora", help="comma-separated: lora, meta-lora")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--inner-lr", type=float, default=0.03, help="inner SGD lr")
    ap.add_argument("--lr", type=float, default=5e-5,
                    help="AdamW lr (the outer lr of meta-lora; fine-tuning uses --ft-lr)")
    ap.add_argument("--ft-lr", type=float, default=5e-4, help="AdamW lr of the fine-tuning step")
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=8.0)
    ap.add_argument("--lora-targets", default="query,value")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.preset is None:
        args.preset = "tiny"
    # What torch_ref's build_state / DataGen / make_adamw read.
    args.config_json = None
    args.model_dir = None
    args.dropout = 0.0
    args.support = "same"
    args.adapter_dim = 64
    args.adapter_init_std = 0.02
    args.wd = 0.01
    args.adamw_impl = "default"
    return args


def main(argv=None):
    args = parse(argv)
    torch_device.import_torch()
    try:
        import peft
    except ImportError as e:
        torch_device.unavailable(f"peft is not installed in {sys.executable}: {e}")
    tr = load_torch_ref(args.torch_ref)
    dev = torch_device.prepare(tr, args.device, args.preset)
    precision = torch_device.set_precision(tr, dev, args.precision)
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    import transformers
    print(json.dumps(dict(torch=torch.__version__, transformers=transformers.__version__,
                          peft=peft.__version__, threads=torch.get_num_threads(),
                          cpu=platform.processor() or platform.machine(), preset=args.preset,
                          device=str(dev), device_name=torch_device.device_name(dev),
                          precision=precision)),
          flush=True)
    for mode in args.mode.split(","):
        if mode not in ("lora", "meta-lora"):
            raise SystemExit(f"unknown mode {mode!r} (lora, meta-lora)")
        lr = args.lr
        if mode == "lora":
            args.lr = args.ft_lr
        res = torch_device.measure(dev, lambda: bench(tr, args, mode))
        res["precision"] = precision
        args.lr = lr
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
