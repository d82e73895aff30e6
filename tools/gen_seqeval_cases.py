#!/usr/bin/env python3
"""Generate seeded random tag sequences and seqeval 1.2.2's scores for them.

The output, tests/fixtures/seqeval_cases.json, is committed; the Rust test
`metric_matches_seqeval_cases` (src/metric.rs) checks primer's metric against it to 1e-9.

Run by hand, outside the repository's build, with seqeval 1.2.2 installed:

    python3 -m venv /tmp/seqeval-venv && /tmp/seqeval-venv/bin/pip install seqeval==1.2.2
    /tmp/seqeval-venv/bin/python tools/gen_seqeval_cases.py [--seed 20220525] [--cases 300]

Each case has several sentences of gold and predicted tags drawn from a mix of generators:
well-formed IOB2 (with predictions made by corrupting gold), fully random B-/I-/O tags
(invalid IOB2: I- after O, type switches inside chunks), and sparse/empty sentences. Both the
default (conlleval-compatible) and strict IOB2 modes are recorded: micro P/R/F1 and per type
P/R/F1/support.
"""
import argparse
import json
import random
import warnings

from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.metrics.sequence_labeling import precision_recall_fscore_support as prfs_default
from seqeval.metrics.v1 import precision_recall_fscore_support as prfs_strict
from seqeval.scheme import IOB2, Entities

TYPES = ["PER", "ORG", "LOC", "MISC"]


def well_formed(rng, n, types):
    tags, i = [], 0
    while i < n:
        if rng.random() < 0.35:
            t = rng.choice(types)
            length = min(n - i, rng.randint(1, 4))
            tags += ["B-" + t] + ["I-" + t] * (length - 1)
            i += length
        else:
            tags.append("O")
            i += 1
    return tags


def random_tags(rng, n, types, p_o):
    out = []
    for _ in range(n):
        if rng.random() < p_o:
            out.append("O")
        else:
            out.append(rng.choice("BI") + "-" + rng.choice(types))
    return out


def corrupt(rng, tags, types, rate):
    out = list(tags)
    for i in range(len(out)):
        if rng.random() < rate:
            r = rng.random()
            if r < 0.3:
                out[i] = "O"
            elif r < 0.6:
                out[i] = rng.choice("BI") + "-" + rng.choice(types)
            elif out[i] != "O":
                # Keep the prefix, change the type, or flip B<->I.
                p, t = out[i].split("-", 1)
                out[i] = ("I" if p == "B" else "B") + "-" + t if rng.random() < 0.5 else p + "-" + rng.choice(types)
    return out


def make_case(rng):
    types = TYPES[: rng.randint(1, len(TYPES))]
    n_sent = rng.randint(1, 8)
    kind = rng.choice(["corrupted", "random", "mixed"])
    gold, pred = [], []
    for _ in range(n_sent):
        n = rng.randint(0, 12) if rng.random() < 0.1 else rng.randint(1, 12)
        if kind == "random":
            g = random_tags(rng, n, types, rng.choice([0.2, 0.5, 0.8]))
            p = random_tags(rng, n, types, rng.choice([0.2, 0.5, 0.8]))
        elif kind == "corrupted":
            g = well_formed(rng, n, types)
            p = corrupt(rng, g, types, rng.choice([0.0, 0.1, 0.3]))
        else:
            g = well_formed(rng, n, types) if rng.random() < 0.5 else random_tags(rng, n, types, 0.6)
            p = corrupt(rng, g, types, 0.4) if rng.random() < 0.5 else random_tags(rng, n, types, 0.6)
        gold.append(g)
        pred.append(p)
    return gold, pred


def scores(gold, pred, strict):
    # The public micro scores, exactly as a user calls them.
    kw = {"mode": "strict", "scheme": IOB2} if strict else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = precision_score(gold, pred, **kw)
        r = recall_score(gold, pred, **kw)
        f = f1_score(gold, pred, **kw)
        if strict:
            pt, rt, ft, st = prfs_strict(gold, pred, average=None, scheme=IOB2)
        else:
            pt, rt, ft, st = prfs_default(gold, pred, average=None)
    # Per-type arrays are in sorted type order, over the types of gold and predicted entities.
    if strict:
        names = sorted(Entities(gold, IOB2).unique_tags | Entities(pred, IOB2).unique_tags)
    else:
        names = sorted({e[0] for e in get_entities(gold)} | {e[0] for e in get_entities(pred)})
    per_type = {
        name: {"precision": float(pt[i]), "recall": float(rt[i]), "f1": float(ft[i]), "support": int(st[i])}
        for i, name in enumerate(names)
    }
    return {"precision": float(p), "recall": float(r), "f1": float(f), "per_type": per_type}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=20220525)
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--out", default="tests/fixtures/seqeval_cases.json")
    args = ap.parse_args()
    from importlib.metadata import version

    assert version("seqeval") == "1.2.2", f"need seqeval 1.2.2, found {version('seqeval')}"
    rng = random.Random(args.seed)
    cases = []
    for k in range(args.cases):
        gold, pred = make_case(rng)
        cases.append(
            {
                "id": k,
                "gold": gold,
                "pred": pred,
                "default": scores(gold, pred, strict=False),
                "strict": scores(gold, pred, strict=True),
            }
        )
    doc = {
        "generator": "tools/gen_seqeval_cases.py",
        "seed": args.seed,
        "seqeval": "1.2.2",
        "cases": cases,
    }
    # One case per line: compact, yet diffs stay readable.
    head = json.dumps({k: v for k, v in doc.items() if k != "cases"})[:-1]
    lines = ",\n".join(json.dumps(c, separators=(",", ":")) for c in cases)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(f'{head}, "cases": [\n{lines}\n]}}\n')
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
