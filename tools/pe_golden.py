#!/usr/bin/env python3
"""Golden dumps of one fine-tuning step for the parameter-efficient methods behind primer's PE
seam, from an independent PyTorch + transformers implementation (CPU, fp32).

    python tools/pe_golden.py --method bitfit --out tests/fixtures/golden-pe/tiny_bitfit

Writes, in the layout of ../shared/golden (see its README):
  config.json, model.safetensors  a tiny random HF BERT (the starting encoder)
  dump.safetensors                init.head.0.*, batch.*, grad.<group>.*, final.<group>.*
  meta.json                       every setting the Rust test reads (mode, optimiser, losses, ...)

Methods (`--method`):
  bitfit       every bias of the encoder (linear and LayerNorm biases) + the head trained; the
               encoder's other weights frozen. Tensors are named `bitfit.<encoder name>`.
  lora         HF peft LoRA (r, alpha, target_modules from the flags, lora_dropout 0) + the head;
               A and B both drawn at random (B non-zero, so that A's gradient is tested too).
               Tensors are named `lora.encoder.layer.<l>.<linear>.lora_{A,B}`.
  adapter-all  a bottleneck adapter x + up(relu(down(x))) after every layer's output (a forward
               hook on each BertLayer) + the head; tensors `adapter.layer.<l>.{down,up}.*`.

With `--meta`: one outer step of first-order meta priming (Algorithm 1) with the method as the
inner loop's PE module, over `--tasks` tasks: per task, S plain SGD steps on copies of the PE
module and the task's head (one support batch reused), the query loss at the adapted weights,
its first-order gradients w.r.t. θp and the PE module summed over tasks, one AdamW step on
θp ∪ PE; head_i := its adapted head. Tensors: `batch.t<i>.{support.0,query}.*`,
`loss.t<i>.{inner,query}`, `inner.t<i>.<group>.*` / `inner.t<i>.head.*` (adapted),
`grad.enc.*` / `grad.<group>.*` (summed), `final.*`.

Needs torch, transformers, safetensors and peft (a venv outside the repository).
"""

import argparse
import copy
import json
import os

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

NUM_LABELS = 7


def tiny_config(args):
    return BertConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=2 * args.hidden,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )


def random_batch(gen, batch, seq, vocab):
    ids = torch.randint(5, vocab, (batch, seq), generator=gen)
    lengths = [seq - (i * 3) % (seq // 2) for i in range(batch)]
    mask = torch.zeros(batch, seq, dtype=torch.int64)
    labels = torch.full((batch, seq), -100, dtype=torch.int64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
        ids[i, 0] = 1
        ids[i, n - 1] = 2
        # Labels on the inner tokens only, some left out (as for non-first subwords).
        for t in range(1, n - 1):
            if (t + i) % 4 != 3:
                labels[i, t] = int(torch.randint(0, NUM_LABELS, (1,), generator=gen))
    return dict(
        input_ids=ids,
        attention_mask=mask,
        token_type_ids=torch.zeros(batch, seq, dtype=torch.int64),
        labels=labels,
    )


class Adapter(torch.nn.Module):
    def __init__(self, hidden, dim, gen):
        super().__init__()
        self.down = torch.nn.Linear(hidden, dim)
        self.up = torch.nn.Linear(dim, hidden)
        with torch.no_grad():
            for lin in (self.down, self.up):
                lin.weight.normal_(0.0, 0.02, generator=gen)
                lin.bias.zero_()

    def forward(self, x):
        return x + self.up(torch.relu(self.down(x)))


def attach(method, enc, args, gen):
    """Freezes the encoder and attaches the method; returns (model, [(our name, param)])."""
    for p in enc.parameters():
        p.requires_grad_(False)
    if method == "bitfit":
        named = [(f"bitfit.{n}", p) for n, p in enc.named_parameters() if n.endswith("bias")]
        for _, p in named:
            p.requires_grad_(True)
        return enc, named
    if method == "lora":
        from peft import LoraConfig, get_peft_model
        cfg = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                         target_modules=args.lora_targets.split(","), init_lora_weights="gaussian")
        model = get_peft_model(enc, cfg)
        named = []
        for n, p in model.named_parameters():
            if "lora_" in n:
                with torch.no_grad():
                    p.normal_(0.0, 0.1, generator=gen)
                # base_model.model.encoder.layer.0.attention.self.query.lora_A.default.weight
                ours = n.removeprefix("base_model.model.").replace(".default.weight", "")
                named.append((f"lora.{ours}", p))
        return model, named
    if method == "adapter-all":
        adapters = torch.nn.ModuleList(
            [Adapter(args.hidden, args.adapter_dim, gen) for _ in enc.encoder.layer])
        for layer, ad in zip(enc.encoder.layer, adapters):
            def hook(_mod, _inp, out, ad=ad):
                if isinstance(out, tuple):
                    return (ad(out[0]),) + tuple(out[1:])
                return ad(out)
            layer.register_forward_hook(hook)
        enc.pe_adapters = adapters
        named = [(f"adapter.layer.{l}.{n}", p) for l, ad in enumerate(adapters)
                 for n, p in ad.named_parameters()]
        return enc, named
    raise SystemExit(f"unknown method {method}")


def loss_on(model, head, b):
    hidden = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                   token_type_ids=b["token_type_ids"]).last_hidden_state
    logits = head(hidden)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, NUM_LABELS), b["labels"].reshape(-1), ignore_index=-100)


def encoder_name(n):
    """An encoder parameter's HF name as primer names it (peft wraps LoRA's linears)."""
    return n.removeprefix("base_model.model.").replace(".base_layer.", ".")


def theta_p_of(model, pe_ids):
    """θp of an attached model as [(enc.<name>, p)]: every parameter not in the PE module."""
    return [(f"enc.{encoder_name(n)}", p) for n, p in model.named_parameters() if id(p) not in pe_ids]


def meta_dump(args, enc, gen):
    heads = []
    for _ in range(args.tasks):
        h = torch.nn.Linear(args.hidden, NUM_LABELS)
        with torch.no_grad():
            h.weight.normal_(0.0, 0.02, generator=gen)
            h.bias.zero_()
        heads.append(h)
    model, named_pe = attach(args.method, enc, args, gen)
    # The adapter-all hook modules live on the model, so deep copies carry their own.
    pe_names = [n for n, _ in named_pe]
    dump = {}
    for n, p in named_pe:
        dump[f"init.{n}"] = p.detach().clone()
    for i, h in enumerate(heads):
        for n, p in h.named_parameters():
            dump[f"init.head.{i}.{n}"] = p.detach().clone()
    tasks = []
    for i in range(args.tasks):
        support = random_batch(gen, args.batch, args.seq, args.vocab)
        query = random_batch(gen, args.batch, args.seq, args.vocab)
        dump.update({f"batch.t{i}.support.0.{k}": v for k, v in support.items()})
        dump.update({f"batch.t{i}.query.{k}": v for k, v in query.items()})
        tasks.append((support, query))
    sums = {}
    for i, (support, query) in enumerate(tasks):
        fast = copy.deepcopy(model)
        fhead = copy.deepcopy(heads[i])
        # The fast module's PE parameters, in named_pe's order (deepcopy keeps module order).
        fast_pe = dict(zip(pe_names, [p for _, p in attach_view(args.method, fast)]))
        for p in fast.parameters():
            p.requires_grad_(False)
        adapted = list(fast_pe.values()) + list(fhead.parameters())
        for p in adapted:
            p.requires_grad_(True)
        inner = []
        for _ in range(args.inner_steps):
            loss = loss_on(fast, fhead, support)
            inner.append(loss.item())
            grads = torch.autograd.grad(loss, adapted)
            with torch.no_grad():
                for p, g in zip(adapted, grads):
                    p -= args.inner_lr * g
        dump[f"loss.t{i}.inner"] = torch.tensor(inner)
        for n, p in fast_pe.items():
            dump[f"inner.t{i}.{n}"] = p.detach().clone()
        for n, p in fhead.named_parameters():
            dump[f"inner.t{i}.head.{n}"] = p.detach().clone()
        # Query: first-order gradients w.r.t. everything but the head, at the adapted weights.
        for p in fast.parameters():
            p.requires_grad_(True)
        for p in fhead.parameters():
            p.requires_grad_(False)
        loss = loss_on(fast, fhead, query)
        dump[f"loss.t{i}.query"] = loss.detach().reshape(1)
        loss.backward()
        pe_ids = {id(p) for p in fast_pe.values()}
        named = [(n, p) for n, p in fast_pe.items()] + theta_p_of(fast, pe_ids)
        for n, p in named:
            if p.grad is not None:
                sums[n] = sums.get(n, 0) + p.grad.detach()
        heads[i] = fhead
    # The outer step on the original θp ∪ PE.
    pe_ids = {id(p) for _, p in named_pe}
    outer = list(named_pe) + theta_p_of(model, pe_ids)
    params = []
    for n, p in outer:
        if n in sums:
            p.requires_grad_(True)
            p.grad = sums[n].clone()
            params.append(p)
            dump[f"grad.{n}"] = sums[n].clone()
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=args.weight_decay)
    opt.step()
    for n, p in outer:
        if n in sums:
            dump[f"final.{n}"] = p.detach().clone()
    for i, h in enumerate(heads):
        for n, p in h.named_parameters():
            dump[f"final.head.{i}.{n}"] = p.detach().clone()
    meta = dict(
        mode=f"meta-{args.method}",
        method=f"first-order meta priming, PE inner loop over {args.method} + head",
        lora=dict(r=args.lora_r, alpha=args.lora_alpha, targets=args.lora_targets.split(",")),
        adapter=dict(dim=args.adapter_dim, layers="all"),
        seed=args.seed, batch=args.batch, seq=args.seq, tasks=args.tasks,
        inner_steps=args.inner_steps, inner_lr=args.inner_lr, support="same", dropout=0.0,
        inner_opt="plain SGD p <- p - lr*g (no momentum, no wd)",
        task_grad_reduction="sum over tasks (no averaging)",
        outer_opt=dict(name="AdamW (torch, decoupled wd)", lr=args.lr, betas=[0.9, 0.999], eps=1e-8,
                       weight_decay=args.weight_decay, wd_on_all_params=True, step=1),
        torch=torch.__version__, transformers=__import__("transformers").__version__,
        tensor_names=sorted(dump),
    )
    save_file({k: v.contiguous() for k, v in dump.items()}, os.path.join(args.out, "dump.safetensors"),
              metadata={"meta": json.dumps(meta)})
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{args.out}: meta step, {len(sums)} summed gradients")


def attach_view(method, model):
    """The PE parameters of an already attached (deep-copied) model, in attach()'s order."""
    if method == "bitfit":
        return [(n, p) for n, p in model.named_parameters() if n.endswith("bias")]
    if method == "lora":
        return [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    if method == "adapter-all":
        return [(n, p) for n, p in model.pe_adapters.named_parameters()]
    raise SystemExit(f"unknown method {method}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=["bitfit", "lora", "adapter-all"], required=True)
    ap.add_argument("--lora-r", type=int, default=4)
    ap.add_argument("--lora-alpha", type=float, default=8.0)
    ap.add_argument("--lora-targets", default="query,value")
    ap.add_argument("--adapter-dim", type=int, default=8)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=120)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--meta", action="store_true", help="dump one meta-priming outer step")
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--inner-steps", type=int, default=2)
    ap.add_argument("--inner-lr", type=float, default=0.03)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    cfg = tiny_config(args)
    enc = BertModel(cfg, add_pooling_layer=False).eval()
    # Non-zero biases everywhere, so that a bias read from the wrong place shows.
    with torch.no_grad():
        for n, p in enc.named_parameters():
            if n.endswith("bias"):
                p.normal_(0.0, 0.05)
    os.makedirs(args.out, exist_ok=True)
    cfg.save_pretrained(args.out)
    save_file({n: t.contiguous() for n, t in enc.state_dict().items()}, os.path.join(args.out, "model.safetensors"))

    gen = torch.Generator().manual_seed(args.seed + 1)
    head = torch.nn.Linear(args.hidden, NUM_LABELS)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=gen)
        head.bias.zero_()
    if args.meta:
        return meta_dump(args, enc, gen)
    batch = random_batch(gen, args.batch, args.seq, args.vocab)

    model, named = attach(args.method, enc, args, gen)
    named += [(f"head.0.{n}", p) for n, p in head.named_parameters()]

    # Start values of everything trained (the BitFit biases are also in model.safetensors).
    dump = {f"init.{n}": p.detach().clone() for n, p in named}
    dump.update({f"batch.{k}": v for k, v in batch.items()})
    hidden = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
    ).last_hidden_state
    logits = head(hidden)
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, NUM_LABELS), batch["labels"].reshape(-1), ignore_index=-100
    )
    loss.backward()
    for n, p in named:
        dump[f"grad.{n}"] = p.grad.detach().clone()
    opt = torch.optim.AdamW([p for _, p in named], lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=args.weight_decay)
    opt.step()
    for n, p in named:
        dump[f"final.{n}"] = p.detach().clone()
    dump["loss"] = loss.detach().reshape(1)

    meta = dict(
        mode=args.method,
        method={"bitfit": "every encoder bias (linear and LayerNorm) + head",
                "lora": "peft LoRA on target_modules, merged scale alpha/r, dropout 0; A and B random",
                "adapter-all": "adapter x + up(relu(down(x))) after every layer's output"}[args.method],
        lora=dict(r=args.lora_r, alpha=args.lora_alpha, targets=args.lora_targets.split(",")),
        adapter=dict(dim=args.adapter_dim, layers="all"),
        seed=args.seed,
        batch=args.batch,
        seq=args.seq,
        dropout=0.0,
        loss="cross_entropy mean over labels != -100",
        outer_opt=dict(name="AdamW (torch, decoupled wd)", lr=args.lr, betas=[0.9, 0.999], eps=1e-8,
                       weight_decay=args.weight_decay, wd_on_all_params=True, step=1),
        losses=dict(loss=loss.item()),
        torch=torch.__version__,
        transformers=__import__("transformers").__version__,
        tensor_names=sorted(dump),
    )
    save_file({k: v.contiguous() for k, v in dump.items()}, os.path.join(args.out, "dump.safetensors"),
              metadata={"meta": json.dumps(meta)})
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{args.out}: loss {loss.item():.6f}, {len(named)} trained tensors")


if __name__ == "__main__":
    main()
