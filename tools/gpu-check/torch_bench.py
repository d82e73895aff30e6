"""PyTorch on the same GPU as tools/gpu-check.sh's primer bench: an mBERT-sized randomly
initialised BERT (L12, H768, 12 heads, vocab 119547) with a 7-label head, batch 32 x seq 128.

Prints one JSON object: per step kind the mean seconds per step over timed steps after warm-up,
tokens/s, and the peak GPU memory. Step kinds:
  full_ft_fp32      forward + backward + AdamW over every weight, fp32 (TF32 off)
  full_ft_bf16      the same under bf16 autocast (fp32 master weights and optimiser state)
  adapter_on_cache  a bottleneck adapter (768->64->768, ReLU, residual) + head trained on
                    encoder outputs computed once without gradients (primer's encoder cache)
Meta-priming outer steps are not timed here (PyTorch has no first-order MAML of primer's
shape built in; torch_ref.py's meta step runs on CPU-sized models).

Usage: python3 torch_bench.py [--device cuda:0] [--steps 10] [--warmup 3]
"""

import argparse
import json
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    a = p.parse_args()
    try:
        import torch
        from transformers import BertConfig, BertModel
    except ImportError as e:
        print(json.dumps({"status": "unavailable", "reason": f"import failed: {e}"}))
        return 0
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"status": "unavailable", "reason": "torch.cuda.is_available() is False"}))
        return 0
    dev = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=119547, hidden_size=768, num_hidden_layers=12,
                     num_attention_heads=12, intermediate_size=3072,
                     hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    b, s, labels_n = a.batch, a.seq, 7
    ids = torch.randint(1000, cfg.vocab_size, (b, s), device=dev)
    mask = torch.ones(b, s, dtype=torch.long, device=dev)
    labels = torch.randint(0, labels_n, (b, s), device=dev)
    tokens = b * s

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def timed(step):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        for _ in range(a.warmup):
            step()
        sync()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        sync()
        sec = (time.perf_counter() - t0) / a.steps
        out = {"seconds_per_step": sec, "tokens_per_second": tokens / sec}
        if dev.type == "cuda":
            out["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        return out

    results = {}
    model = BertModel(cfg, add_pooling_layer=False).to(dev).train()
    head = torch.nn.Linear(768, labels_n).to(dev)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=5e-5)
    loss_fn = torch.nn.CrossEntropyLoss()

    def full_step(bf16):
        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                h = model(input_ids=ids, attention_mask=mask).last_hidden_state
                logits = head(h)
            loss = loss_fn(logits.float().view(-1, labels_n), labels.view(-1))
            loss.backward()
            opt.step()
        return step

    results["full_ft_fp32"] = timed(full_step(False))
    results["full_ft_bf16"] = timed(full_step(True))

    with torch.no_grad():
        model.eval()
        cached = model(input_ids=ids, attention_mask=mask).last_hidden_state.detach()
    down = torch.nn.Linear(768, 64).to(dev)
    up = torch.nn.Linear(64, 768).to(dev)
    small = list(down.parameters()) + list(up.parameters()) + list(head.parameters())
    opt2 = torch.optim.AdamW(small, lr=5e-4)

    def adapter_step():
        opt2.zero_grad(set_to_none=True)
        h = cached + up(torch.relu(down(cached)))
        loss = loss_fn(head(h).view(-1, labels_n), labels.view(-1))
        loss.backward()
        opt2.step()

    results["adapter_on_cache"] = timed(adapter_step)
    print(json.dumps({
        "status": "ok",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "model": "bert L12/H768/A12, vocab 119547, random init",
        "batch": b, "seq": s, "warmup": a.warmup, "steps": a.steps,
        "steps_timed": results,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
