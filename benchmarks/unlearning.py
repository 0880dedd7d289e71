"""Unlearning quality of every method on the embedded world, side by side, in one run.

    python benchmarks/unlearning.py --json runs/unlearning.json            # full (see README for time)
    python benchmarks/unlearning.py --json runs/unlearning-quick.json --quick

Requests (fixed before any result was seen):
  global           every class, one at a time (10 runs);
  domain-specific  every (class, domain) cell, one at a time (40 runs);
  domain           every domain, one at a time (4 runs);
  multi-class      (star, heart) in (sketch, cartoon) [domain-specific, 4 cells];
                   (triangle, moon, hexagon) globally [global]; sketch and painting at once [domain];
  composed         forget circle, then cross with ``compose=True`` on the edited model, scored as
                   the union (circle and cross globally) [global].
Methods: text (text-only nullspace, 2512.14137), regularized (its regularised closed form),
multimodal (text + visual prototypes, 2512.14113: the library defaults), deep (multimodal with
``depth="deep"``: the output eraser after it, data-free), finetune (Kravets &
Namboodiri, benchmarks/finetune_baseline.py; ``--finetune-recipe official|tuned``), and with
--sites both edit sites for multimodal. The fine-tuning baseline costs minutes per request on a
CPU: ``--finetune-on`` picks the requests it runs on (default: the quick requests); its time to
criterion is compared with the multimodal edit time of the same request in the same run.
``--quick`` runs one request per paradigm on fewer images. Accuracies use the held-out test split.
Every run also records the depth audit (lightning_unlearn.audit) before and after the edit: linear
probes, k-NN, paraphrased prompts and retrieval on the test split, probes fitted on the val split
(same images per cell), at the image embedding, the pooled features and the middle block.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.finetune_baseline import Recipe, finetune_unlearn  # noqa: E402
from lightning_unlearn import EditError, ForgetRequest, UnlearnConfig, cache, restore_, unlearn_  # noqa: E402
from lightning_unlearn.audit import LAYERS, audit_features, extract  # noqa: E402
from lightning_unlearn.data import CLASSES, DOMAINS, QUICK_REQUESTS, rendered_batches  # noqa: E402
from lightning_unlearn.load import load_clip  # noqa: E402
from lightning_unlearn.zeroshot import classifier, request_accuracy, worst_cells  # noqa: E402

SINGLE = ([("global", {"forget_classes": [c]}) for c in CLASSES]
          + [("domain-specific", {"forget_classes": [c], "forget_domains": [d]}) for c in CLASSES for d in DOMAINS]
          + [("domain", {"forget_domains": [d]}) for d in DOMAINS])
MULTI = [("domain-specific", {"forget_classes": ["star", "heart"], "forget_domains": ["sketch", "cartoon"]}),
         ("global", {"forget_classes": ["triangle", "moon", "hexagon"]}),
         ("domain", {"forget_domains": ["sketch", "painting"]})]
#: (paradigm of the union, the requests applied one after the other, the union they add up to)
COMPOSED = [("global", [{"forget_classes": ["circle"]}, {"forget_classes": ["cross"]}],
             {"forget_classes": ["circle", "cross"]})]
REQUESTS = ([("single", p, [kw], kw) for p, kw in SINGLE] + [("multi", p, [kw], kw) for p, kw in MULTI]
            + [("composed", p, steps, union) for p, steps, union in COMPOSED])
QUICK = list(QUICK_REQUESTS)  # the demo's requests, one per paradigm
QUICK_RUNS = [("single", p, [kw], kw) for p, kw in QUICK]
DOMAIN_SPECIFIC = [(c, d) for c in CLASSES for d in DOMAINS]
#: The baseline tuned for the embedded model on the val split (benchmarks/finetune_sweep.py): of the
#: grid points, the one that reaches its criterion on the most global requests (8 of 10; 3e-4 x 10,
#: chosen first on star alone, reaches it on 6).
TUNED = Recipe(lr=3e-3, steps_per_epoch=1)
METHODS = {"text": {"method": "text"}, "regularized": {"method": "text", "solver": "regularized"},
           "multimodal": {}, "deep": {"depth": "deep"}}


def run_worst_cells(request, before: tuple, after: tuple) -> dict:
    """The worst forgotten and retained cells (:func:`lightning_unlearn.zeroshot.worst_cells`) from the
    per-cell counts ``(correct, total)`` of :func:`~lightning_unlearn.zeroshot.request_accuracy`
    (``cells=True``)."""
    return worst_cells(*after, request, before=before)


def prepare(n_per_cell: int, split: str = "test"):
    """The embedded model, the rendered held-out test set (or ``split``) and the colour classifier."""
    torch.manual_seed(0)
    emb = load_clip("embedded")
    return emb, rendered_batches(split, n_per_cell, emb.preprocess), classifier(emb.model, emb.tokenizer, emb.colours,
                                                              emb.colour_templates)


def depth(model, emb, request, fit_batches, test_batches, features=None, before=None) -> dict:
    """The depth audit of ``model`` for ``request`` (``features``: the model's (fit, test) features,
    when already extracted). ``before``: the audit of the unedited model, for an edit at the joint
    site: every layer before the projection is then unchanged (tested bit-exact), so only the
    output is audited again and the inner layers' numbers are carried over."""
    layers = ("output",) if before is not None else LAYERS
    fit, test = features or (extract(model, fit_batches, layers), extract(model, test_batches, layers))
    out = audit_features(model, emb.tokenizer, request, fit, test, templates=emb.templates)
    return out if before is None else out | {k: v for k, v in before.items() if "@" in k}


def run(args) -> dict:
    emb, batches, colour_T = prepare(args.n_per_cell)
    fit_batches = rendered_batches("val", args.n_per_cell, emb.preprocess)
    model = emb.model
    unedited = extract(model, fit_batches), extract(model, batches)  # one extraction for every "before"
    methods = dict(METHODS)
    if args.sites:
        base = UnlearnConfig().site
        other = "pooled" if base == "joint" else "joint"
        methods[f"multimodal-{other}"] = {"site": other}
    if args.set:  # e.g. --set margin=1.0: every multimodal run with that config override
        methods["multimodal"] = dict(args.set)
    requests = [r for r in (QUICK_RUNS if args.quick else REQUESTS)
                if not args.paradigms or r[1] in args.paradigms or r[0] in args.paradigms]
    shard, shards = (int(v) for v in args.shard.split("/"))
    requests = requests[shard::shards]
    names = args.methods.split(",") if args.methods else list(methods) + ["finetune"]
    finetune_on = {json.dumps(r[3], sort_keys=True)
                   for r in (QUICK_RUNS if args.finetune_on == "quick" else requests)}
    recipe = {"official": Recipe(), "tuned": TUNED}[args.finetune_recipe]
    runs = []
    t_start = time.perf_counter()
    for kind, paradigm, steps, union in requests:
        request = ForgetRequest(emb.classnames, emb.domains, **union)
        parts = [ForgetRequest(emb.classnames, emb.domains, **kw) for kw in steps]
        before = request_accuracy(model, emb, batches, request, colour_T, cells=True)
        cells_before = before.pop("cells")
        audit_before = depth(model, emb, request, fit_batches, batches, unedited)
        for name in names:
            if name == "finetune":
                if kind != "single" or json.dumps(union, sort_keys=True) not in finetune_on:
                    continue
                edited, info = finetune_unlearn(model, emb.tokenizer, request, emb.templates, recipe)
                after = request_accuracy(edited, emb, batches, request, colour_T, cells=True)
                seconds, extra = info["seconds"], info
                audit_after = depth(edited, emb, request, fit_batches, batches)
            else:
                seconds, ranks = 0.0, []
                try:
                    with cache.use(cache.Cache()) if args.cold else contextlib.nullcontext():  # --cold: no reuse
                        for i, part in enumerate(parts):
                            u = unlearn_(model, emb.tokenizer, part, progress=False, compose=i > 0, **methods[name])
                            seconds, ranks = seconds + u.seconds, ranks + [u.ranks.get("image")]
                except (ValueError, EditError) as e:  # refused (text-only two-sided on whole domains): no edit
                    after, seconds, extra, audit_after = before, 0.0, {"refused": str(e)}, audit_before
                else:
                    after, extra = request_accuracy(model, emb, batches, request, colour_T, cells=True), {"rank": ranks}
                    joint = UnlearnConfig(**methods[name]).site == "joint"
                    audit_after = None if args.audit_methods and name not in args.audit_methods else depth(
                        model, emb, request, fit_batches, batches, before=audit_before if joint else None)
                restore_(model)
            cells_after = after.pop("cells", cells_before)  # a refused edit changed nothing
            row = {"set": kind, "paradigm": paradigm, "method": name, "forget": request.describe(),
                   "steps": [ForgetRequest(emb.classnames, emb.domains, **kw).describe() for kw in steps],
                   **{f"{k}_before": before[k] for k in before}, **{f"{k}_after": after[k] for k in after},
                   **run_worst_cells(request, cells_before, cells_after),
                   "edit_seconds": round(seconds, 3), **{k: v for k, v in extra.items() if k != "seconds"},
                   **({} if audit_after is None else {"audit_before": audit_before, "audit_after": audit_after})}
            runs.append(row)
            audit = "" if audit_after is None else " ".join(
                f"{label} {audit_before[k]:.2f}->{audit_after[k]:.2f}"
                for label, k in [("probe", "probe_balanced_acc"), ("recall", "probe_recall"),
                                 ("paraphrase", "paraphrase_acc")])
            print(f"{kind:8s} {paradigm:16s} {name:18s} forget {row['forget_acc_before']:.3f}->"
                  f"{row['forget_acc_after']:.3f} retain {row['retain_acc_before']:.3f}->{row['retain_acc_after']:.3f} "
                  f"unrelated {row['unrelated_acc_before']:.3f}->{row['unrelated_acc_after']:.3f} {seconds:.1f}s  "
                  f"{audit} | {request.describe()}", flush=True)
    return {"runs": runs, "n_per_cell": args.n_per_cell, "quick": args.quick, "defaults": asdict(UnlearnConfig()),
            "overrides": dict(args.set),
            "total_seconds": round(time.perf_counter() - t_start, 1)}


def summary(result: dict) -> tuple[str, dict]:
    """Per (request set, paradigm, method): forget accuracy after, drops in points (mean / worst),
    edit time; for the fine-tuning baseline (its time to criterion, on the requests where it reached
    it) and the deep mode also their time over the multimodal edit time of the same requests in the
    same run: the ratio of the sums and the worst request's."""
    rows, table = {}, []
    for r in result["runs"]:
        rows.setdefault((r.get("set", "single"), r["paradigm"], r["method"]), []).append(r)
    edit_s = {r["forget"]: r["edit_seconds"] for r in result["runs"] if r["method"] == "multimodal"}
    audit = ("probe_balanced_acc", "probe_recall", "paraphrase_acc")
    lines = ["| requests | paradigm | method | runs | forget after (mean / worst) | retain drop (mean / worst) | "
             "same class other domains drop (mean / worst) | colour drop (worst) | worst forgotten cell / worst "
             "retained cell (drop, points), over the runs | edit s (mean) | "
             "time / multimodal edit time, total (worst request) | probe bal. acc raw after (mean / worst) | "
             "probe recall after (mean / worst) | paraphrase after (mean / worst) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (kind, paradigm, method), rs in rows.items():
        drop = lambda k: [100 * (x[f"{k}_before"] - x[f"{k}_after"]) for x in rs  # noqa: E731
                          if x[f"{k}_before"] is not None]
        fa = [x["forget_acc_after"] for x in rs]
        sc = drop("same_class_other_domains_acc")
        ratio = worst = None
        timed = [x for x in rs if x.get("converged") is not False]  # a baseline short of its criterion: no ratio
        if method in ("finetune", "deep") and timed and all(x["forget"] in edit_s for x in timed):
            ratio = sum(x["edit_seconds"] for x in timed) / sum(edit_s[x["forget"]] for x in timed)
            worst = min(x["edit_seconds"] / edit_s[x["forget"]] for x in timed)
        s = {"forget_after_mean": sum(fa) / len(fa), "forget_after_worst": max(fa),
             "retain_drop_mean": sum(drop("retain_acc")) / len(rs), "retain_drop_worst": max(drop("retain_acc")),
             "same_class_drop_mean": sum(sc) / len(sc) if sc else None,
             "same_class_drop_worst": max(sc) if sc else None,
             "unrelated_drop_worst": max(drop("unrelated_acc")),
             **worst_of(rs),
             "edit_seconds_mean": sum(x["edit_seconds"] for x in rs) / len(rs),
             "time_ratio": ratio, "time_ratio_worst": worst,
             "converged": [x.get("converged") for x in rs] if method == "finetune" else None}
        for key in audit:
            v = [x["audit_after"][key] for x in rs if "audit_after" in x]
            s |= {f"{key}_after_mean": sum(v) / len(v) if v else None, f"{key}_after_worst": max(v, default=None)}
        table.append(s | {"set": kind, "paradigm": paradigm, "method": method, "runs": len(rs)})
        f = lambda v, spec=".2f": "-" if v is None else format(v, spec)  # noqa: E731
        lines.append(f"| {kind} | {paradigm} | {method} | {len(rs)} | {s['forget_after_mean']:.3f} / "
                     f"{s['forget_after_worst']:.3f} | {s['retain_drop_mean']:.2f} / {s['retain_drop_worst']:.2f} | "
                     f"{f(s['same_class_drop_mean'])} / {f(s['same_class_drop_worst'])} | "
                     f"{s['unrelated_drop_worst']:.2f} | {cell_text(s)} | {s['edit_seconds_mean']:.2f} | "
                     f"{f(ratio, '.1f')} ({f(worst, '.1f')}) | "
                     + " | ".join(f"{f(s[k + '_after_mean'], '.3f')} / {f(s[k + '_after_worst'], '.3f')}"
                                  for k in audit) + " |")
    runs = [r for r in result["runs"] if "audit_after" in r]
    return "\n".join(lines) + ("\n\n" + depth_table(runs) if runs else ""), {"summary": table}


def worst_of(rows: list[dict]) -> dict:
    """The worst forgotten cell (most accurate after) and the worst retained cell (most points lost) over
    ``rows``, with the request each comes from (None for rows recorded without cells)."""
    wf = [r for r in rows if r.get("worst_forget_cell")]
    wr = [r for r in rows if r.get("worst_retain_cell")]
    f = max(wf, key=lambda r: r["worst_forget_cell"]["acc"], default=None)
    r = max(wr, key=lambda r: r["worst_retain_cell"]["drop_points"], default=None)
    return {"worst_forget_cell": f and f["worst_forget_cell"] | {"forget": f["forget"]},
            "worst_retain_cell": r and r["worst_retain_cell"] | {"forget": r["forget"]}}


def cell_text(s: dict) -> str:
    f, r = s.get("worst_forget_cell"), s.get("worst_retain_cell")
    if not f and not r:
        return "-"
    return (f"{'/'.join(f['cell'])} {f['acc']:.2f}" if f else "-") + " / " + (
        f"{'/'.join(r['cell'])} {r['drop_points']:.1f}" if r else "-")


DEPTH_KEYS = ("probe_balanced_acc", "probe_balanced_acc_normalised", "probe_recall", "probe_retain_acc",
              "knn_recall", "paraphrase_acc", "retrieval_precision", "probe_balanced_acc@pooled",
              "probe_recall@pooled", "probe_balanced_acc@block3", "probe_recall@block3")


def depth_table(runs: list[dict]) -> str:
    """Per run: the depth audit of the forgotten cells, before -> after."""
    keys = [k for k in DEPTH_KEYS if k in runs[0]["audit_after"]]
    lines = ["| method | forget | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in runs:
        b, a = r["audit_before"], r["audit_after"]
        lines.append(f"| {r['method']} | {r['forget'].split(' (')[0]} | "
                     + " | ".join(f"{fmt(b[k])} -> {fmt(a[k])}" for k in keys) + " |")
    return "\n".join(lines)


def _key_value(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    return key, json.loads(value)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--n-per-cell", type=int, default=None, help="test images per cell, and val images per cell for the audit probes (100 full, 30 quick)")
    p.add_argument("--methods", default=None, help="comma list of text,regularized,multimodal,finetune")
    p.add_argument("--sites", action="store_true", help="also run multimodal at the other edit site")
    p.add_argument("--finetune-recipe", choices=("official", "tuned"), default="tuned")
    p.add_argument("--finetune-on", choices=("quick", "all"), default="quick",
                   help="requests the fine-tuning baseline runs on (default: the three quick ones)")
    p.add_argument("--paradigms", default=None,
                   help="comma list of global,domain-specific,domain,single,multi,composed (default all)")
    p.add_argument("--set", action="append", default=[], type=_key_value, metavar="KEY=JSON",
                   help="override an UnlearnConfig field for multimodal, e.g. --set margin=1.0 (repeatable)")
    p.add_argument("--cold", action="store_true", help="every edit in a fresh cache: pays for all its prompts and "
                   "prototypes (the time ratios); by default requests of one run reuse what earlier ones computed")
    p.add_argument("--audit-methods", default=None, help="comma list: audit only these methods' edits (default all)")
    p.add_argument("--shard", default="0/1", metavar="I/N", help="run every N-th request from the I-th (one "
                   "process per core; ratios stay within a shard), then --merge the shards' JSON")
    p.add_argument("--merge", nargs="+", type=Path, default=None, help="only summarise these shards into --json")
    args = p.parse_args(argv)
    args.paradigms = args.paradigms.split(",") if args.paradigms else None
    args.audit_methods = args.audit_methods.split(",") if args.audit_methods else None
    args.n_per_cell = args.n_per_cell or (30 if args.quick else 100)
    if args.merge:
        parts = [json.loads(f.read_text()) for f in args.merge]
        result = parts[0] | {"runs": [r for part in parts for r in part["runs"]], "shards": [str(f) for f in args.merge],
                             "total_seconds": max(part["total_seconds"] for part in parts)}
    else:
        result = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))  # the raw runs first, whatever happens below
    table, summ = summary(result)
    result |= summ
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(table)
    print(f"total {result['total_seconds']} s; wrote {args.json}")


if __name__ == "__main__":
    main()
