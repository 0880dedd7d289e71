"""Composed edits on the embedded model: every ordered pair of paradigms, several-class requests and
chains of three, each request applied with ``compose=True`` on top of the ones before it.

    python benchmarks/composition.py --json benchmarks/results/composition.json
    python benchmarks/composition.py --json runs/composition-quick.json --quick   # two chains

Each request alone first (what the composition adds is the difference), then per chain: every request's forgotten cells (mean and worst cell) scored against its own target, and
the cells no request of the chain forgets (mean drop and worst cell drop, in points) against the
retain targets; a chain the library refuses is recorded with its reason. Requests (fixed before any
result was seen): G star, G2 moon, G+ (triangle, hexagon), S heart in sketches, S' arrow in sketches
(same domain), S'' heart in cartoons (same class), Sx arrow in cartoons (a checkerboard with S),
S+ (circle, cross) in sketches, W paintings, W2 photos.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_unlearn import EditError, ForgetRequest, cache, edit, restore_, unlearn_  # noqa: E402
from lightning_unlearn.data import CLASSES, DOMAINS, rendered_batches  # noqa: E402
from lightning_unlearn.embedded import load_embedded  # noqa: E402
from lightning_unlearn.zeroshot import evaluate  # noqa: E402

REQUESTS = {"G": {"forget_classes": ["star"]}, "G2": {"forget_classes": ["moon"]},
            "G+": {"forget_classes": ["triangle", "hexagon"]},
            "S": {"forget_classes": ["heart"], "forget_domains": ["sketch"]},
            "S'": {"forget_classes": ["arrow"], "forget_domains": ["sketch"]},
            "S''": {"forget_classes": ["heart"], "forget_domains": ["cartoon"]},
            "Sx": {"forget_classes": ["arrow"], "forget_domains": ["cartoon"]},
            "S+": {"forget_classes": ["circle", "cross"], "forget_domains": ["sketch"]},
            "W": {"forget_domains": ["painting"]}, "W2": {"forget_domains": ["photo"]}}
ALONE = ["G", "G2", "G+", "S", "S'", "S''", "S+", "W", "W2"]  # each request alone: what composing adds
PAIRS = ["G,G2", "G,S", "G,W", "S,G", "S,S'", "S,S''", "S,Sx", "S,W", "W,G", "W,G2", "W,S", "W,W2"]
SEVERAL = ["G+,S+", "S+,G+"]
CHAINS = ["G,S,W", "S,W,G2", "W,S,G2", "G2,W,S'", "S,G,S'"]
QUICK = ["G,S", "S,G"]
#: Targets on the test split (fractions; drops in points): forget mean / worst cell per class
#: request, chance on average for whole domains; retained cells of the chain.
FORGET_MEAN, FORGET_CELL, RETAIN_MEAN, RETAIN_CELL = 0.02, 0.05, 1.0, 5.0


def run_chain(emb, batches, base, seq: str, unchecked: bool = False, seed: int = 0) -> dict:
    keys = seq.split(",")
    requests = [ForgetRequest(CLASSES, DOMAINS, **REQUESTS[k]) for k in keys]
    restore_(emb.model)
    t0, names, would = time.perf_counter(), [], []
    refusal = edit.composition_refusal
    if unchecked:  # measure what the library refuses: run it anyway, keep the reason
        def note(*a):
            would.append(refusal(*a))
        edit.composition_refusal = note
    try:
        for i, r in enumerate(requests):
            names.append(unlearn_(emb.model, emb.tokenizer, r, compose=i > 0, progress=False,
                                  **({"seed": seed} if seed else {})).name)
    except EditError as e:
        restore_(emb.model)
        return {"chain": seq, "seed": seed, "refused": str(e), "refused_at": keys[len(names)]}
    finally:
        edit.composition_refusal = refusal
    seconds = time.perf_counter() - t0
    after = evaluate(emb.model, emb.tokenizer, CLASSES, emb.templates, batches, DOMAINS, progress=False)["cells"]
    restore_(emb.model)
    forgotten = {c for r in requests for c in r.forget_cells}
    out = {"chain": seq, "seed": seed, "seconds": round(seconds, 1), "requests": []}
    if unchecked:
        out["would_refuse"] = next((w for w in would if w), None)
    for k, r in zip(keys, requests):
        accs = {c: after[c] for c in r.forget_cells}
        worst = max(accs, key=accs.get)
        limit = FORGET_MEAN if r.paradigm != "domain" else 1 / len(CLASSES)
        out["requests"].append({"request": k, "paradigm": r.paradigm, "forget_mean": sum(accs.values()) / len(accs),
                                "worst_forget_cell": list(worst), "worst_forget_acc": accs[worst],
                                "met": sum(accs.values()) / len(accs) <= limit + 1e-6
                                and (r.paradigm == "domain" or accs[worst] <= FORGET_CELL)})
    drops = {c: 100 * (base[c] - after[c]) for c in base if c not in forgotten}
    worst = max(drops, key=drops.get)
    out |= {"retain_drop_mean": sum(drops.values()) / len(drops), "worst_retain_cell": list(worst),
            "worst_retain_drop": drops[worst]}
    out["met"] = all(r["met"] for r in out["requests"]) and out["retain_drop_mean"] <= RETAIN_MEAN \
        and out["worst_retain_drop"] <= RETAIN_CELL
    return out


def table(rows) -> str:
    lines = ["| chain | seed | request: forget mean (worst cell) | retain drop mean / worst cell (points) | targets |",
             "|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['chain']} | {r.get('seed', 0)} | refused at {r['refused_at']}: {r['refused'].split(':')[0]} | - | - |")
            continue
        forget = "; ".join(f"{q['request']} {q['forget_mean']:.2f} ({q['worst_forget_acc']:.2f} "
                           f"{'/'.join(q['worst_forget_cell'])})" for q in r["requests"])
        lines.append(f"| {r['chain']} | {r.get('seed', 0)} | {forget} | {r['retain_drop_mean']:.2f} / {r['worst_retain_drop']:.1f} "
                     f"({'/'.join(r['worst_retain_cell'])}) | {'met' if r['met'] else 'NOT met'}"
                     f"{' (refused by default)' if r.get('would_refuse') else ''} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--n-per-cell", type=int, default=50, help="test images per cell")
    p.add_argument("--quick", action="store_true", help=f"only {QUICK}")
    p.add_argument("--chains", nargs="+", help="only these chains (comma-separated request keys)")
    p.add_argument("--unchecked", action="store_true",
                   help="run the chains the library refuses too (recording why it would refuse them)")
    p.add_argument("--seeds", default="0", help="comma list of edit seeds (every request of a chain at that seed)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    emb = load_embedded()
    batches = rendered_batches("test", args.n_per_cell, emb.preprocess)
    base = evaluate(emb.model, emb.tokenizer, CLASSES, emb.templates, batches, DOMAINS, progress=False)["cells"]
    chains = args.chains or (QUICK if args.quick else ALONE + PAIRS + SEVERAL + CHAINS)
    rows, t0 = [], time.perf_counter()
    with cache.use(cache.Cache()):
        for seed in seeds:
            for seq in chains:
                rows.append(run_chain(emb, batches, base, seq, args.unchecked, seed))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
                args.json.parent.mkdir(parents=True, exist_ok=True)  # what ran so far, should the run be cut
                args.json.write_text(json.dumps({"n_per_cell": args.n_per_cell, "seeds": seeds, "runs": rows}, indent=1))
    ran = [r for r in rows if "refused" not in r]
    result = {"n_per_cell": args.n_per_cell, "unchecked": args.unchecked, "seeds": seeds, "requests": REQUESTS, "targets": {
        "forget_mean": FORGET_MEAN, "forget_cell": FORGET_CELL, "retain_drop_mean": RETAIN_MEAN,
        "retain_drop_cell": RETAIN_CELL}, "runs": rows, "summary": {
        "chains": len(rows), "refused": len(rows) - len(ran), "met": sum(r["met"] for r in ran),
        "worst_retain_drop": max((r["worst_retain_drop"] for r in ran), default=None),
        "total_seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads()}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print()
    print(table(rows))
    print(f"{result['summary']}; wrote {args.json}")


if __name__ == "__main__":
    main()
