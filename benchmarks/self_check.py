"""How well the self-check predicts real per-cell accuracy, what correction rounds and the retained-cell
constraints of whole domains do, and what each costs, on the embedded world (test split).

    python benchmarks/self_check.py --json benchmarks/results/self_check.json --n-per-cell 50
    python benchmarks/self_check.py --json runs/x.json --requests demo --variants default --seeds 0,1,2

Requests: ``demo`` (the demo's three), ``domains`` (every whole domain), ``ds`` (four single cells of
domain-specific requests, one per domain), ``multi`` (star and heart in sketch and cartoon; triangle,
moon and hexagon globally; sketch and painting), ``pairs`` (every pair of domains), ``global`` (every
class, globally), ``cells`` (every (class, domain) cell as a domain-specific request). Variants: ``default`` (the library defaults),
``cells0`` (``retain_cell_weight=0``: whole domains without the retained-cell constraints, the
behaviour before them), ``cells4`` / ``cells9`` / ``cells900`` (the constraints at that weight on
every request), ``rounds1`` / ``rounds2``
(correction rounds), ``fp64`` / ``bf16`` (the defaults with the prototype synthesis perturbed:
float64, bfloat16 autocast; see :data:`PERTURBATIONS`); fewer image-steps: ``warm`` (``proto_start="class"``,
the class stage's warm start), ``lr2x`` (``proto_lr=0.1``), ``lr2x-half`` (``proto_lr=0.1`` and half the
"auto" steps of every paradigm), ``cellstop`` (each cell's prototypes stop on their own instead of with
their whole stop group: the synthesis's stop groups cut to one cell); ``--threads`` sets torch's CPU threads. Every edit runs with
``check=True``: the check of its map on held-out prototypes (seed + 1000, never constraints).

Per run: forget / retain accuracy (mean, and the worst cells, :func:`lightning_unlearn.zeroshot.worst_cells`)
on the real test images; the check's verdict, its worst cells and how it agrees with the real cells:
the rank correlation (Spearman) between each checked retained cell's predicted change (the mean
margin drop of its held-out prototypes) and its real accuracy drop, and, for every real failing cell
(a retained cell down more than 5 points; a forgotten cell above 5 % besides the sink class of a
whole domain), whether the check flagged it, did not count it (no held-out prototype the unedited
model names confidently) or passed it. The edit is at the joint site, so the edited embedding of a test
image is ``M h`` with ``h`` its unedited embedding: the test embeddings are computed once.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_unlearn import ForgetRequest, cache, restore_, unlearn_  # noqa: E402
from lightning_unlearn import directions  # noqa: E402
from lightning_unlearn import prototypes as protos  # noqa: E402
from lightning_unlearn.settings import AUTO_PROTO_STEPS  # noqa: E402
from lightning_unlearn.data import QUICK_REQUESTS, embed_split  # noqa: E402
from lightning_unlearn.data.world import CLASSES, DOMAINS  # noqa: E402
from lightning_unlearn.embedded import load_embedded  # noqa: E402
from lightning_unlearn.zeroshot import classifier, split_accuracy, worst_cells  # noqa: E402

REQUESTS = {
    "demo": [kw for _, kw in QUICK_REQUESTS],
    "domains": [{"forget_domains": [d]} for d in DOMAINS],
    "ds": [{"forget_classes": [c], "forget_domains": [d]} for c, d in
           [("heart", "photo"), ("arrow", "sketch"), ("moon", "cartoon"), ("circle", "painting")]],
    "multi": [{"forget_classes": ["star", "heart"], "forget_domains": ["sketch", "cartoon"]},
              {"forget_classes": ["triangle", "moon", "hexagon"]},
              {"forget_domains": ["sketch", "painting"]}],
    "pairs": [{"forget_domains": [DOMAINS[i], DOMAINS[j]]} for i in range(4) for j in range(i + 1, 4)],
    "global": [{"forget_classes": [c]} for c in CLASSES],
    "cells": [{"forget_classes": [c], "forget_domains": [d]} for c in CLASSES for d in DOMAINS],
}
VARIANTS = {"default": {}, "cells0": {"retain_cell_weight": 0.0}, "cells4": {"retain_cell_weight": 4.0},
            "cells9": {"retain_cell_weight": 9.0}, "cells900": {"retain_cell_weight": 900.0},
            "rounds1": {"rounds": 1}, "rounds2": {"rounds": 2}, "fp64": {}, "bf16": {},
            "warm": {"proto_start": "class"}, "lr2x": {"proto_lr": 0.1}, "lr2x-half": {"proto_lr": 0.1}, "cellstop": {}}
#: Variants that perturb the numerics of the prototype synthesis (library defaults otherwise), standing in
#: for other hardware: float64 synthesis (on a float64 copy of the model), bfloat16 autocast synthesis
#: (``prototypes.options(autocast=True)``).
#: ``lr2x-half`` halves :data:`lightning_unlearn.settings.AUTO_PROTO_STEPS`; ``cellstop`` makes every
#: cell a stop group of its own (the synthesis batches keep their size).
#: Each has its own prototype cache, shared by its runs (nothing synthesised unperturbed is reused).
PERTURBATIONS = ("fp64", "bf16", "lr2x-half", "cellstop")


@contextlib.contextmanager
def perturbed(kind: str | None, own: cache.Cache | None = None):
    """Prototype synthesis (:func:`lightning_unlearn.prototypes.synthesize`) perturbed by ``kind``, in the
    prototype cache ``own`` (a fresh one when None)."""
    if kind is None:
        yield
        return
    original = protos.synthesize

    def fp64(model, texts, **kw):
        twin = copy.deepcopy(model).double()
        kw = kw | ({"classes": kw["classes"].double()} if kw.get("classes") is not None else {})
        p = original(twin, texts.double(), **kw)
        p.images = p.images.float()
        return p

    steps, group_images, batch_images = dict(AUTO_PROTO_STEPS), directions.group_images, protos.batch_images
    if kind == "fp64":
        protos.synthesize = fp64
    elif kind == "lr2x-half":
        AUTO_PROTO_STEPS.update({k: v // 2 for k, v in steps.items()})
    elif kind == "cellstop":  # stop groups of one cell, batches of the size one stop group had
        def one_group_per_cell(model, cell_images, opts=None):
            return max(cell_images, group_images(model) // cell_images * cell_images)
        directions.group_images, protos.batch_images = (lambda model: 1), one_group_per_cell
    try:  # bf16: the library's own autocast option of the synthesis
        with cache.use(cache.Cache() if own is None else own), protos.options(autocast=kind == "bf16"):
            yield
    finally:
        protos.synthesize, protos.batch_images, directions.group_images = original, batch_images, group_images
        AUTO_PROTO_STEPS.update(steps)
FAIL_POINTS, FAIL_FORGET = 5.0, 0.05


def spearman(a: list[float], b: list[float]) -> float | None:
    """Rank correlation (average ranks for ties); None with fewer than 3 pairs or a constant side."""
    if len(a) < 3:
        return None

    def ranks(x):
        x = torch.tensor(x, dtype=torch.float64)
        order = x.argsort()
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for v in x.unique():  # ties share their mean rank
            r[x == v] = r[x == v].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return None if den == 0 else float((ra * rb).sum()) / den


def counts(h, y, M, T, C, D):
    e = F.normalize(h @ M.T, dim=-1)
    hit = ((e @ T).argmax(-1) == y[:, 0]).long()
    idx = y[:, 0] * D + y[:, 1]
    correct = torch.zeros(C * D, dtype=torch.long).index_add_(0, idx, hit).view(C, D)
    total = torch.zeros(C * D, dtype=torch.long).index_add_(0, idx, torch.ones_like(idx)).view(C, D)
    return correct, total


def agreement(request, check, acc_b, acc_a) -> dict:
    """How the check's cells agree with the real per-cell accuracies (C x D, before / after)."""
    classes, domains = list(request.classnames), list(request.domains)
    rows = {tuple(c["cell"]): c for c in check.cells}
    forget = set(request.forget_cells)
    sinks = set()
    if request.paradigm == "domain":  # the class that keeps each forgotten domain (the most accurate after)
        for d in {d for _, d in forget}:
            j = domains.index(d)
            sinks.add((classes[int(acc_a[:, j].argmax())], d))
    pred, real, failing = [], [], []
    for (c, d), r in rows.items():
        i, j = classes.index(c), domains.index(d)
        drop = 100 * float(acc_b[i, j] - acc_a[i, j])
        if (c, d) not in forget and r["n"]:
            pred.append(r["margin_before"] - r["margin_after"])
            real.append(drop)
        bad = drop > FAIL_POINTS if (c, d) not in forget else ((c, d) not in sinks and acc_a[i, j] > FAIL_FORGET)
        if bad:
            flagged = r["n"] > 0 and ((r["acc_after"] < 1 - FAIL_POINTS / 100) if (c, d) not in forget
                                      else r["acc_after"] > FAIL_FORGET)
            failing.append({"cell": [c, d], "forget": (c, d) in forget, "real_acc_before": float(acc_b[i, j]),
                            "real_acc_after": float(acc_a[i, j]),
                            "check": "flagged" if flagged else ("not counted" if not r["n"] else "passed")})
    false_alarms = [list(k) for k, r in rows.items() if r["n"] and k not in forget
                    and r["acc_after"] < 1 - FAIL_POINTS / 100
                    and 100 * float(acc_b[classes.index(k[0]), domains.index(k[1])]
                                    - acc_a[classes.index(k[0]), domains.index(k[1])]) <= FAIL_POINTS]
    return {"spearman_retained_margin_drop_vs_real_drop": spearman(pred, real), "retained_cells_compared": len(pred),
            "real_failing_cells": failing, "false_alarm_cells": false_alarms,
            "cells_counted": sum(1 for r in rows.values() if r["n"]), "cells": len(rows)}


def real_pass(request, split, worst) -> bool:
    """The quality targets on the real test images: class requests forget <= 0.02 mean, <= 0.05 worst
    cell; whole domains forget <= chance + 0.005 (1 / classes); retained drop <= 1 point mean, <= 5 worst."""
    wr = worst["worst_retain_cell"]
    retain_ok = split["retain_drop"] <= 1.0 and (wr is None or wr["drop_points"] <= 5.0)
    if request.paradigm == "domain":
        return retain_ok and split["forget_acc"] <= 1 / len(request.classnames) + 0.005
    return retain_ok and split["forget_acc"] <= 0.02 and worst["worst_forget_cell"]["acc"] <= 0.05


def run(args) -> dict:
    torch.manual_seed(0)
    emb = load_embedded()
    _, h, y = embed_split(emb, "test", args.n_per_cell)
    T = classifier(emb.model, emb.tokenizer, emb.classnames, emb.templates)
    C, D = len(emb.classnames), len(emb.domains)
    eye = torch.eye(h.shape[1])
    cb, nb = counts(h, y, eye, T, C, D)
    acc_b = cb / nb.clamp(min=1)
    rows, caches = [], {k: cache.Cache() for k in PERTURBATIONS}
    for seed in args.seeds:  # seeds outermost: a run cut short has every request at its first seeds
        for group, kw in [(g, kw) for g in args.requests for kw in REQUESTS[g]]:
            request = ForgetRequest(emb.classnames, emb.domains, **kw)
            for name in args.variants:
                overrides = VARIANTS[name] | ({"seed": seed} if seed else {})
                t0 = time.perf_counter()
                with perturbed(name if name in PERTURBATIONS else None, caches.get(name)):
                    u = unlearn_(emb.model, emb.tokenizer, request, progress=False, check=True, **overrides)
                wall = time.perf_counter() - t0
                restore_(emb.model)
                ca, na = counts(h, y, u.maps["image"], T, C, D)
                acc_a = ca / na.clamp(min=1)
                sb, sa = split_accuracy(cb, nb, request), split_accuracy(ca, na, request)
                worst = worst_cells(ca, na, request, before=(cb, nb))
                split = {"forget_acc": sa["forget_acc"], "retain_drop": 100 * (sb["retain_acc"] - sa["retain_acc"]),
                         "same_class_drop": None if sb["same_class_other_domains_acc"] is None else
                         100 * (sb["same_class_other_domains_acc"] - sa["same_class_other_domains_acc"])}
                check = u.check
                corr = u.stats["image"].get("correction")
                row = {"request": request.describe(), "group": group, "paradigm": request.paradigm,
                       "forget": kw, "seed": seed, "overrides": overrides, "threads": torch.get_num_threads(),
                       "variant": name + (f"-t{args.threads}" if args.threads else ""),
                       **split, **worst, "real_pass": real_pass(request, split, worst),
                       "edit_seconds": round(u.seconds, 3), "wall_seconds": round(wall, 3),
                       "image_steps": u.stats["image"].get("prototype_image_steps"),
                       "check_seconds": check.seconds, "check_passed": check.passed,
                       "check_failures": check.failures, "check_worst_forget_cell": check.worst_forget_cell,
                       "check_worst_retain_cell": check.worst_retain_cell,
                       "agreement": agreement(request, check, acc_b, acc_a),
                       "correction": None if corr is None else {k: v for k, v in corr.items() if k != "check"}}
                rows.append(row)
                wr, wf = worst["worst_retain_cell"], worst["worst_forget_cell"]
                ag = row["agreement"]
                rho = ag["spearman_retained_margin_drop_vs_real_drop"]
                print(f"{name:8s} s{seed} {request.describe()[:50]:50s} forget {split['forget_acc']:.3f} "
                      f"(worst {'/'.join(wf['cell'])} {wf['acc']:.2f}) retain drop {split['retain_drop']:+.2f} "
                      f"(worst {'/'.join(wr['cell'])} {wr['drop_points']:+.1f}) real "
                      f"{'pass' if row['real_pass'] else 'FAIL'} | check {'pass' if check.passed else 'FAIL'} "
                      f"rho {'-' if rho is None else format(rho, '.2f')} "
                      f"failing {[(f['cell'], f['check']) for f in ag['real_failing_cells']]} "
                      f"| edit {u.seconds:.1f}s check {check.seconds:.1f}s", flush=True)
                if args.json:
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps({"rows": rows, "n_per_cell": args.n_per_cell}, indent=1))
    return {"rows": rows, "n_per_cell": args.n_per_cell, "split": "test", "threads": torch.get_num_threads()}


def summary(result: dict) -> tuple[str, list[dict]]:
    """Per (request group, variant): real forget / retain (mean and worst cell), check agreement, cost."""
    groups = {}
    for r in result["rows"]:
        groups.setdefault((r["group"], r["variant"]), []).append(r)
    lines = ["| requests | variant | runs | forget mean / worst cell | retain drop mean / worst cell (points) | "
             "real pass | check pass | check = real verdict | rho (median) | real failing cells: flagged / not "
             "counted / passed | false alarms | edit s (mean) | check s (max) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    out = []
    for (group, variant), rs in groups.items():
        fa = [r["forget_acc"] for r in rs]
        rd = [r["retain_drop"] for r in rs]
        wf = max(rs, key=lambda r: r["worst_forget_cell"]["acc"] if r["paradigm"] != "domain" else -1)
        wr = max(rs, key=lambda r: r["worst_retain_cell"]["drop_points"])
        rhos = sorted(r["agreement"]["spearman_retained_margin_drop_vs_real_drop"] for r in rs
                      if r["agreement"]["spearman_retained_margin_drop_vs_real_drop"] is not None)
        fails = [f for r in rs for f in r["agreement"]["real_failing_cells"]]
        tally = {k: sum(f["check"] == k for f in fails) for k in ("flagged", "not counted", "passed")}
        s = {"group": group, "variant": variant, "runs": len(rs), "forget_mean": sum(fa) / len(fa),
             "worst_forget_cell": wf["worst_forget_cell"] | {"request": wf["request"]},
             "retain_drop_mean": sum(rd) / len(rd),
             "worst_retain_cell": wr["worst_retain_cell"] | {"request": wr["request"], "seed": wr["seed"]},
             "real_pass": sum(r["real_pass"] for r in rs), "check_pass": sum(r["check_passed"] for r in rs),
             "verdict_agrees": sum(r["real_pass"] == r["check_passed"] for r in rs),
             "rho_median": rhos[len(rhos) // 2] if rhos else None, "failing": tally,
             "false_alarms": sum(len(r["agreement"]["false_alarm_cells"]) for r in rs),
             "edit_seconds_mean": sum(r["edit_seconds"] for r in rs) / len(rs),
             "check_seconds_max": max(r["check_seconds"] for r in rs)}
        out.append(s)
        w1, w2 = s["worst_forget_cell"], s["worst_retain_cell"]
        lines.append(f"| {group} | {variant} | {len(rs)} | {s['forget_mean']:.3f} / {w1['acc']:.2f} "
                     f"({'/'.join(w1['cell'])}) | "
                     f"{s['retain_drop_mean']:.2f} / {w2['drop_points']:.1f} ({'/'.join(w2['cell'])}) | "
                     f"{s['real_pass']}/{len(rs)} | {s['check_pass']}/{len(rs)} | {s['verdict_agrees']}/{len(rs)} | "
                     f"{'-' if s['rho_median'] is None else format(s['rho_median'], '.2f')} | "
                     f"{tally['flagged']} / {tally['not counted']} / {tally['passed']} | {s['false_alarms']} | "
                     f"{s['edit_seconds_mean']:.1f} | {s['check_seconds_max']:.1f} |")
    return "\n".join(lines), out


#: The quality targets (test split) per kind of request: forget mean / worst cell (None: chance, whole
#: domains), retained drop mean / worst cell (points), same class in other domains (points).
TARGETS = {"forget_mean": 0.02, "forget_cell": 0.05, "retain_mean": 1.0, "retain_cell": 5.0, "same_class": 2.0}


def kind(row: dict) -> str:
    f = row["forget"]
    several = len(f.get("forget_classes") or []) > 1 or len(f.get("forget_domains") or []) > 1
    return row["paradigm"] + (" (several)" if several else "")


def label(forget: dict) -> str:
    """A request in a few words: "star", "star in sketch", "painting", "star+heart in sketch+cartoon"."""
    classes, domains = forget.get("forget_classes"), forget.get("forget_domains")
    return " in ".join(x for x in ("+".join(classes or []), "+".join(domains or [])) if x)


def meets(row: dict) -> list[str]:
    """The targets one run misses (an empty list: it meets every one)."""
    domain = row["paradigm"] == "domain"
    fails = []
    if row["forget_acc"] > (0.1 + 0.005 if domain else TARGETS["forget_mean"]):
        fails.append("forget mean")
    if not domain and row["worst_forget_cell"]["acc"] > TARGETS["forget_cell"]:
        fails.append("forget cell")
    if row["retain_drop"] > TARGETS["retain_mean"]:
        fails.append("retain mean")
    if row["worst_retain_cell"]["drop_points"] > TARGETS["retain_cell"]:
        fails.append("retain cell")
    if row["same_class_drop"] is not None and row["same_class_drop"] > TARGETS["same_class"]:
        fails.append("same class")
    return fails


def robustness(result: dict) -> tuple[str, list[dict]]:
    """Per kind of request and condition (variant, threads): the worst over requests and seeds of
    every target quantity, and whether each target holds."""
    groups, seen = {}, set()
    for r in result["rows"]:
        key = (r["request"], r["seed"], r["variant"], r.get("threads", 1))
        if key in seen:  # a request in two groups (sketch+painting: "multi" and "pairs") counts once
            continue
        seen.add(key)
        cond = r["variant"] + (f", {r['threads']} threads" if r.get("threads", 1) != 1 else "")
        groups.setdefault((kind(r), cond), []).append(r)
    lines = ["| request kind | condition | runs (requests x seeds) | runs meeting every target | forget mean: worst run | "
             "forget worst cell | retain drop mean: worst run | retain worst cell | same class drop: worst run | "
             "targets that fail | image-steps per run (mean) | edit s (mean) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    out = []
    for (k, cond), rs in sorted(groups.items()):
        ok = sum(not meets(r) for r in rs)
        domain = k.startswith("domain") and not k.startswith("domain-specific")
        fm = max(rs, key=lambda r: r["forget_acc"])
        fc = None if domain else max(rs, key=lambda r: r["worst_forget_cell"]["acc"])
        rm = max(rs, key=lambda r: r["retain_drop"])
        rc = max(rs, key=lambda r: r["worst_retain_cell"]["drop_points"])
        sc = [r for r in rs if r["same_class_drop"] is not None]
        scw = max(sc, key=lambda r: r["same_class_drop"]) if sc else None
        chance = 0.1 + 0.005  # 10 classes; half an image of 100 for float32 accuracies
        fails = []
        if fm["forget_acc"] > (chance if domain else TARGETS["forget_mean"]):
            fails.append("forget mean")
        if fc is not None and fc["worst_forget_cell"]["acc"] > TARGETS["forget_cell"]:
            fails.append("forget cell")
        if rm["retain_drop"] > TARGETS["retain_mean"]:
            fails.append("retain mean")
        if rc["worst_retain_cell"]["drop_points"] > TARGETS["retain_cell"]:
            fails.append("retain cell")
        if scw is not None and scw["same_class_drop"] > TARGETS["same_class"]:
            fails.append("same class")
        s = {"kind": k, "condition": cond, "runs": len(rs), "runs_meeting_targets": ok,
             "failing_runs": [{"request": label(r["forget"]), "seed": r["seed"], "misses": meets(r),
                               "worst_retain_cell": r["worst_retain_cell"]} for r in rs if meets(r)],
             "forget_mean_worst": fm["forget_acc"],
             "forget_cell_worst": None if fc is None else fc["worst_forget_cell"]["acc"],
             "retain_mean_worst": rm["retain_drop"], "retain_cell_worst": rc["worst_retain_cell"]["drop_points"],
             "same_class_worst": None if scw is None else scw["same_class_drop"], "fails": fails,
             "image_steps_mean": mean_of(rs, "image_steps"), "edit_seconds_mean": mean_of(rs, "edit_seconds")}
        out.append(s)
        cell = rc["worst_retain_cell"]
        lines.append(
            f"| {k} | {cond} | {len(rs)} | {ok}/{len(rs)} | {fm['forget_acc']:.3f} (s{fm['seed']}) | "
            + ("- (sink class kept)" if fc is None else f"{fc['worst_forget_cell']['acc']:.2f} "
               f"({'/'.join(fc['worst_forget_cell']['cell'])}, s{fc['seed']})")
            + f" | {rm['retain_drop']:.2f} (s{rm['seed']}) | {cell['drop_points']:.1f} ({'/'.join(cell['cell'])}, "
            f"{label(rc['forget'])}, s{rc['seed']}) | "
            + ("-" if scw is None else f"{scw['same_class_drop']:.2f} (s{scw['seed']})")
            + f" | {', '.join(fails) or 'none'} | "
            + " | ".join("-" if s[key] is None else f"{s[key]:,.{digits}f}"
                         for key, digits in (("image_steps_mean", 0), ("edit_seconds_mean", 2))) + " |")
    return "\n".join(lines), out


def mean_of(rows: list[dict], key: str) -> float | None:
    """The mean of ``key`` over ``rows`` (None when a row lacks it: results recorded before it)."""
    values = [r.get(key) for r in rows]
    return None if None in values else sum(values) / len(values)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--n-per-cell", type=int, default=50)
    p.add_argument("--requests", default="demo,domains,ds,multi", help=f"comma list of {sorted(REQUESTS)}")
    p.add_argument("--variants", default="default,cells0,rounds1", help=f"comma list of {sorted(VARIANTS)}")
    p.add_argument("--seeds", default="0", help="comma list of edit seeds")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--merge", nargs="+", type=Path, default=None, help="only summarise these JSON results")
    p.add_argument("--robustness", action="store_true", help="also the table of targets per request kind and "
                   "condition (seeds, perturbations), worst over requests and seeds")
    args = p.parse_args(argv)
    args.requests, args.variants = args.requests.split(","), args.variants.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.merge:
        parts = [json.loads(f.read_text()) for f in args.merge]
        result = parts[0] | {"rows": [r for part in parts for r in part["rows"]]}
    else:
        result = run(args)
    table, summ = summary(result)
    result |= {"table": table, "summary": summ}
    if args.robustness:
        rtable, rsumm = robustness(result)
        result |= {"robustness_table": rtable, "robustness": rsumm}
        table += "\n\n" + rtable
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(table)


if __name__ == "__main__":
    main()
