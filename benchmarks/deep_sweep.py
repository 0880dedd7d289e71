"""Depth of forgetting, shallow vs deep: data-free, 5 real images per forgotten cell, N of every cell.

    python benchmarks/deep_sweep.py --json benchmarks/results/deep_sweep.json               # every request
    python benchmarks/deep_sweep.py --json runs/deep_model.json --model --paradigms global  # real edits

Requests: every class (global, 10), every (class, domain) cell (domain-specific, 40), every domain
(whole domain, 4). Images: ``--n-per-cell`` per cell of the val split (probe fit) and of the test
split (everything reported); the evidence comes from the train split, which neither probe sees.

Default (feature) mode: the deep mode's eraser ``E`` (:func:`lightning_unlearn.deep.eraser`) is
applied to cached raw ``encode_image`` outputs, with the cell means it gets from one shared set of
prototypes (``deep``: the data-free defaults, one per cell), with 5 train images per forgotten cell
(``deep+evidence``), and with N train images of every cell, forgotten and retained
(``deep+every-cell-N``, N in ``--every-cell``; with evidence of every cell the eraser also removes
the normalised gap, as in the library). The surface edit is left out there: it is a
full-rank map after ``E``, so it changes neither linear probe much (``--model`` measures both
together). ``--model`` runs the real edits (``unlearn_``: shallow, deep, deep + evidence, deep +
evidence of every cell) and measures the same quantities on the edited model, with edit times.

(An eraser fitted on the val split's own means brings the val-fitted probe to 0.500 by
construction: LEACE equalises the class means of the set it is fitted on. That says nothing about
held-out images, so no variant uses val or test images.)

Metrics, for the forgotten cells (probes are :func:`lightning_unlearn.probes.fit_probe` logistic
regressions fitted on the edited val embeddings and scored on the edited test embeddings): ``probe_bal_raw`` / ``probe_bal_norm``
(binary "forgotten cells vs the rest", balanced accuracy, raw / normalised embedding; chance 0.5),
``probe_recall`` (10-class probe, recall on the forgotten cells), ``probe_recall_same`` (the same
class in other domains), ``probe_retain_acc``; zero-shot ``zs_forget``, ``zs_retain``, ``zs_same``,
``colour`` (the unrelated task).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_unlearn import ForgetRequest, UnlearnConfig, restore_, unlearn_  # noqa: E402
from lightning_unlearn import cache, deep  # noqa: E402
from lightning_unlearn.data import CLASSES, DOMAINS, cell_images, render_split  # noqa: E402
from lightning_unlearn.embedded import load_embedded  # noqa: E402
from lightning_unlearn.metrics import depth_metrics  # noqa: E402
from lightning_unlearn.zeroshot import classifier, encode_images  # noqa: E402

REQUESTS = ([("global", {"forget_classes": [c]}) for c in CLASSES]
            + [("domain-specific", {"forget_classes": [c], "forget_domains": [d]}) for c in CLASSES for d in DOMAINS]
            + [("domain", {"forget_domains": [d]}) for d in DOMAINS])
N_EVIDENCE = 5
EVERY_CELL = (5, 20, 80)


def encode(model, x) -> torch.Tensor:
    """Raw image embeddings in float64, 400 images at a time."""
    return encode_images(model, x, batch_size=400).double()


def data(emb, n: int, n_train: int = N_EVIDENCE):
    """Images and labels of ``n`` val and test and ``n_train`` train images per cell, and the class
    and colour classifiers."""
    xv, yv = render_split("val", n, emb.preprocess)
    xt, yt = render_split("test", n, emb.preprocess)
    xe, ye = render_split("train", n_train, emb.preprocess)
    T = classifier(emb.model, emb.tokenizer, emb.classnames, emb.templates).double()
    Tc = classifier(emb.model, emb.tokenizer, emb.colours, emb.colour_templates).double()
    return {"xv": xv, "yv": yv, "xt": xt, "yt": yt, "xe": xe, "ye": ye, "T": T, "Tc": Tc}


def evidence_of(D, cells, k: int = N_EVIDENCE):
    """The first ``k`` train images of each of ``cells``, as ``evidence``."""
    return cell_images(D["xe"], D["ye"], cells, k)


def measure(Hv, yv, Ht, yt, request, D) -> dict:
    """:func:`~lightning_unlearn.metrics.depth_metrics` with the class and colour classifiers of ``D``."""
    return depth_metrics(Hv, yv, Ht, yt, request, D["T"], D["Tc"])


def feature_sweep(emb, D, requests, every_cell=EVERY_CELL, save=lambda runs: None) -> list[dict]:
    """The eraser alone on cached embeddings: none / data-free / evidence of the forgotten cells /
    evidence of every cell, every request."""
    cfg = UnlearnConfig(depth="deep")
    model = emb.model
    Hv, Ht, He = encode(model, D["xv"]), encode(model, D["xt"]), encode(model, D["xe"])
    everything = ForgetRequest(CLASSES, DOMAINS, forget_classes=[CLASSES[0]])  # any request lists every cell
    t0 = time.perf_counter()
    proto, _ = deep.cell_embeddings(model, emb.tokenizer, everything, n_prototypes=cfg.deep_prototypes,
                                    proto_steps=cfg.prototype_steps("eraser"), proto_lr=cfg.proto_lr, seed=cfg.seed,
                                    class_templates=cfg.class_templates, progress=False)
    print(f"prototypes of every cell: {time.perf_counter() - t0:.1f} s", flush=True)
    cells = list(proto)
    pmean = {c: h.mean(0) for c, h in proto.items()}
    real = {c: h.mean(0) for c, h in cell_images(Hv, D["yv"], cells).items()}  # the prototypes' statistics only
    evid = {k: cell_images(He, D["ye"], cells, k) for k in {N_EVIDENCE, *every_cell}}
    stats = {"proto_zs_acc": float(((F.normalize(torch.stack([pmean[c] for c in cells]), dim=-1) @ D["T"]).argmax(1)
                                    == torch.tensor([CLASSES.index(c) for c, _ in cells])).double().mean()),
             "proto_to_real_mean_dist_rel": float(torch.stack([(pmean[c] - real[c]).norm() / real[c].norm()
                                                               for c in cells]).mean()),
             "proto_class_delta_cos": float(torch.stack([
                 F.cosine_similarity(proto_delta(pmean, k), proto_delta(real, k), dim=0) for k in CLASSES]).mean())}
    print(stats, flush=True)
    runs = []
    for paradigm, kw in requests:
        request = ForgetRequest(CLASSES, DOMAINS, **kw)
        variants = {"none": None, "deep": proto,
                    "deep+evidence": proto | {c: evid[N_EVIDENCE][c] for c in request.forget_cells},
                    **{f"deep+every-cell-{k}": evid[k] for k in every_cell}}
        for name, cell_h in variants.items():
            E = torch.eye(Hv.shape[1], dtype=torch.float64) if cell_h is None else \
                deep.eraser(cell_h, request, normalised=name.startswith("deep+every-cell"))
            row = measure(Hv @ E.T, D["yv"], Ht @ E.T, D["yt"], request, D)
            runs.append({"paradigm": paradigm, "variant": name, "forget": request.describe()} | row)
            save(runs)
            print(f"{paradigm:16s} {name:14s} {request.describe():40s} " +
                  " ".join(f"{k}={v:.3f}" for k, v in row.items() if v is not None), flush=True)
    return runs, stats


def proto_delta(means, cls):
    own = torch.stack([v for (c, _), v in means.items() if c == cls]).mean(0)
    return own - torch.stack([v for (c, _), v in means.items() if c != cls]).mean(0)


def model_sweep(emb, D, requests, every_cell=EVERY_CELL) -> list[dict]:
    """Real edits: shallow, deep (data-free), deep with evidence of the forgotten cells and of every
    cell (the largest count of ``every_cell``), with cold edit times (nothing cached)."""
    model, runs, k = emb.model, [], max(every_cell)
    for paradigm, kw in requests:
        request = ForgetRequest(CLASSES, DOMAINS, **kw)
        everything = request.forget_cells + request.retain_cells
        for name, extra in [("shallow", {}), ("deep", {"depth": "deep"}),
                            ("deep+evidence", {"depth": "deep", "evidence": evidence_of(D, request.forget_cells)}),
                            (f"deep+every-cell-{k}", {"depth": "deep", "evidence": evidence_of(D, everything, k)})]:
            with cache.use(cache.Cache()):  # every edit cold: its time is comparable
                u = unlearn_(model, emb.tokenizer, request, progress=False, **extra)
            row = measure(encode(model, D["xv"]), D["yv"], encode(model, D["xt"]), D["yt"], request, D)
            restore_(model)
            runs.append({"paradigm": paradigm, "variant": name, "forget": request.describe(),
                         "edit_seconds": round(u.seconds, 2)} | row)
            print(f"{paradigm:16s} {name:14s} {request.describe():40s} {u.seconds:6.1f}s " +
                  " ".join(f"{k}={v:.3f}" for k, v in row.items() if v is not None), flush=True)
    return runs


def summary(runs) -> tuple[str, list]:
    """Per paradigm and variant: mean (worst) of the forget-side metrics, and of the drops in points of
    the keep-side ones against the unedited model ("none"; absolute values where a run has none)."""
    base = {(r["paradigm"], r["forget"]): r for r in runs if r["variant"] == "none"}
    keep = ["zs_retain", "colour", "probe_retain_acc", "zs_same", "probe_recall_same"]
    cols = ["zs_forget", "probe_bal_raw", "probe_bal_norm", "probe_recall"] + keep
    groups = {}
    for r in runs:
        b = base.get((r["paradigm"], r["forget"]))
        g = groups.setdefault((r["paradigm"], r["variant"]), {k: [] for k in cols + ["edit_seconds"]})
        for k in cols:
            if r.get(k) is not None:
                g[k].append(100 * (b[k] - r[k]) if b and k in keep else r[k])
        if "edit_seconds" in r:
            g["edit_seconds"].append(r["edit_seconds"])
    names = [f"{k} drop" if base and k in keep else k for k in cols]
    lines = ["| paradigm | variant | runs | " + " | ".join(names) + " | edit s |", "|---|---|---|" + "---|" * (len(cols) + 1)]
    table = []
    for (paradigm, variant), g in groups.items():
        worst = {k: (min(v) if not base and k in keep else max(v)) for k, v in g.items() if v}
        s = {"paradigm": paradigm, "variant": variant, "runs": len(g["zs_forget"]),
             **{k: (sum(v) / len(v), worst[k]) for k, v in g.items() if v}}
        table.append(s)
        fmt = lambda k: "-" if k not in s else (f"{s[k][0]:.2f} ({s[k][1]:.2f})" if base and k in keep  # noqa: E731
                                               else f"{s[k][0]:.3f} ({s[k][1]:.3f})")
        lines.append(f"| {paradigm} | {variant} | {s['runs']} | " + " | ".join(fmt(k) for k in cols) +
                     f" | {'-' if 'edit_seconds' not in s else format(s['edit_seconds'][0], '.1f')} |")
    note = "(mean (worst) over the requests; drops in points against the unedited model)" if base else \
        "(mean (worst) over the requests)"
    return "\n".join(lines) + "\n" + note, table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--n-per-cell", type=int, default=30)
    p.add_argument("--model", action="store_true", help="real edits (shallow / deep / deep + evidence / deep + every cell; "
                   "whole domains are skipped: the deep mode refuses them)")
    p.add_argument("--paradigms", default=None, help="comma list of global,domain-specific,domain (default all)")
    p.add_argument("--limit", type=int, default=None, help="at most this many requests per paradigm (say so!)")
    p.add_argument("--every-cell", default=",".join(map(str, EVERY_CELL)),
                   help="comma list of train images per cell for the deep+every-cell-N variants (default %(default)s)")
    p.add_argument("--summary-only", action="store_true", help="reprint the table of an existing --json result")
    args = p.parse_args(argv)
    if args.summary_only:
        print(summary(json.loads(args.json.read_text())["runs"])[0])
        return
    torch.manual_seed(0)
    torch.set_grad_enabled(True)
    emb = load_embedded()
    every_cell = tuple(int(k) for k in args.every_cell.split(","))
    D = data(emb, args.n_per_cell, max(N_EVIDENCE, *every_cell))
    requests = [r for r in REQUESTS if not args.paradigms or r[0] in args.paradigms.split(",")]
    if args.limit:
        requests = [r for i, r in enumerate(requests) if sum(q[0] == r[0] for q in requests[:i]) < args.limit]
    t0 = time.perf_counter()
    result = {"n_per_cell": args.n_per_cell, "n_evidence": N_EVIDENCE, "every_cell": every_cell,
              "mode": "model" if args.model else "features",
              "deep_defaults": asdict(UnlearnConfig(depth="deep")), "limit": args.limit}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    if args.model:  # whole domains are refused by the deep mode
        result["runs"] = model_sweep(emb, D, [r for r in requests if r[0] != "domain"], every_cell)
    else:
        result["runs"], result["prototype_stats"] = feature_sweep(
            emb, D, requests, every_cell, save=lambda runs: args.json.write_text(json.dumps(result | {"runs": runs}, default=str)))
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    table, result["summary"] = summary(result["runs"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=str))
    print(table)
    print(f"total {result['total_seconds']} s; wrote {args.json}")


if __name__ == "__main__":
    main()
