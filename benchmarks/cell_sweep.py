"""How the defaults were re-chosen: config variants on EVERY request of a paradigm, on the val split.

    python benchmarks/cell_sweep.py --json benchmarks/results/cell_sweep.json \
        --paradigms domain-specific --n-per-cell 20 --variant default= --variant margin1=margin=1.0

Every variant is ``UnlearnConfig()`` with its overrides, run on every request of the chosen
paradigms: global = every class, domain-specific = every (class, domain) cell, domain = every
domain, multi-domain = every pair of domains, multi-global = eight requests of 2-3 classes,
multi-ds = nine domain-specific requests of several classes and/or domains. Variants are chosen
on ``World("val", n)``; the test split is scored beside it (``test_*`` keys, the ``table_test``
summary) only to show that a choice holds on held-out images. Depth beside it
(``depth_before`` / ``depth_after``): the binary probe "forgotten cells vs the rest" fitted on the
edited val embeddings and scored on the edited test ones, raw and L2-normalised.
The edit sits after the image projection (site "joint", image tower), so the edited embedding of
an image is ``M h`` with ``h`` its unedited embedding: the val embeddings are computed once and
every edit is scored from them (checked against the model's own forward pass on the first run).
Prototypes come from the library's cache (lightning_unlearn.cache): a variant with the same synthesis
settings reuses them.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_unlearn import ForgetRequest, UnlearnConfig, restore_, unlearn_  # noqa: E402
from lightning_unlearn.probes import binary_probe  # noqa: E402
from lightning_unlearn.data import CLASSES, DOMAINS, embed_split  # noqa: E402
from lightning_unlearn.metrics import forget_mask  # noqa: E402
from lightning_unlearn.embedded import load_embedded  # noqa: E402
from lightning_unlearn.zeroshot import classifier, split_accuracy, worst_cells  # noqa: E402

PARADIGMS = {"global": [{"forget_classes": [c]} for c in CLASSES],
             "domain-specific": [{"forget_classes": [c], "forget_domains": [d]} for c in CLASSES for d in DOMAINS],
             "domain": [{"forget_domains": [d]} for d in DOMAINS],
             "multi-domain": [{"forget_domains": [DOMAINS[i], DOMAINS[j]]} for i in range(4) for j in range(i + 1, 4)],
             # several classes globally: five pairs, two triples by stride, and the benchmark's triple
             "multi-global": ([{"forget_classes": list(CLASSES[i:i + 2])} for i in range(0, 10, 2)]
                              + [{"forget_classes": list(CLASSES[j::3][:3])} for j in (0, 1)]
                              + [{"forget_classes": ["triangle", "moon", "hexagon"]}]),
             # several classes in several domains (fixed before any result): 2 x 2, 2-3 classes in 1 domain,
             # 1 class in 3 domains, chosen by index so every class and domain appears
             "multi-ds": ([{"forget_classes": list(CLASSES[i:i + 2]), "forget_domains": [DOMAINS[i // 2 % 4],
                                                                                       DOMAINS[(i // 2 + 1) % 4]]}
                           for i in range(0, 10, 2)]
                          + [{"forget_classes": list(CLASSES[j::4][:3]), "forget_domains": [DOMAINS[j]]} for j in (0, 2)]
                          + [{"forget_classes": [CLASSES[j]], "forget_domains": list(DOMAINS[1:])} for j in (1, 7)])}


#: A variant override (not a config field): apply the request's cells one at a time, each composed on the last.
ONE_BY_ONE = "one_cell_at_a_time"


def score(h, y, M, T, colour_T, request, n_classes, n_domains) -> dict:
    """Forget / retain / same-class-other-domain / colour accuracy of the embeddings ``M h``."""
    e = F.normalize(h @ M.T, dim=-1)
    hit = ((e @ T).argmax(-1) == y[:, 0]).long()
    idx = y[:, 0] * n_domains + y[:, 1]
    correct = torch.zeros(n_classes * n_domains, dtype=torch.long).index_add_(0, idx, hit).view(n_classes, n_domains)
    total = torch.zeros(n_classes * n_domains, dtype=torch.long).index_add_(0, idx, torch.ones_like(idx))
    out = split_accuracy(correct, total.view(n_classes, n_domains), request)
    return out | {"unrelated_acc": float(((e @ colour_T).argmax(-1) == y[:, 2]).float().mean()),
                  "cells": (correct / total.view(n_classes, n_domains).clamp(min=1)).tolist()}


def worst_of(rows: list[dict], before: str, after: str) -> tuple[dict | None, dict | None]:
    """Over ``rows``, the worst forgotten cell (most accurate after) and the worst retained cell (most
    points lost), each with its request (:func:`lightning_unlearn.zeroshot.worst_cells`); None for
    results recorded without cells."""
    found = []
    for r in rows:
        if "cells" not in r[before] or "cells" not in r[after]:
            continue
        request = ForgetRequest(CLASSES, DOMAINS, forget_classes=sorted({c for c, _ in r["forget"]}),
                                forget_domains=sorted({d for _, d in r["forget"]}))
        if {tuple(c) for c in r["forget"]} != set(request.forget_cells):  # not a class x domain rectangle
            continue
        b, a = torch.tensor(r[before]["cells"]), torch.tensor(r[after]["cells"])
        found.append((worst_cells(a, torch.ones_like(a), request, before=(b, torch.ones_like(b))), r["forget"]))
    if not found:
        return None, None
    f = max(found, key=lambda w: w[0]["worst_forget_cell"]["acc"])
    k = max(found, key=lambda w: w[0]["worst_retain_cell"]["drop_points"])
    return f[0]["worst_forget_cell"] | {"forget": f[1]}, k[0]["worst_retain_cell"] | {"forget": k[1]}


def depth(h_fit, y_fit, h_test, y_test, request) -> dict:
    """The binary probe "forgotten cells vs the rest" (balanced accuracy) on the raw and the
    L2-normalised embeddings, fitted on ``h_fit`` and scored on ``h_test`` (lightning_unlearn.audit)."""
    forget = forget_mask(request, request.classnames, request.domains)
    f_fit, f_test = forget[y_fit[:, 0], y_fit[:, 1]], forget[y_test[:, 0], y_test[:, 1]]
    return {f"probe_balanced_acc{suffix}": binary_probe(f(h_fit), f_fit, f(h_test), f_test)
            for suffix, f in [("", lambda h: h), ("_normalised", lambda h: F.normalize(h, dim=-1))]}


def run(args) -> dict:
    torch.manual_seed(0)
    emb = load_embedded()
    x, h, y = embed_split(emb, "val", args.n_per_cell)
    _, h_test, y_test = embed_split(emb, "test", args.n_per_cell)
    T = classifier(emb.model, emb.tokenizer, emb.classnames, emb.templates)
    colour_T = classifier(emb.model, emb.tokenizer, emb.colours, emb.colour_templates)
    C, D = len(emb.classnames), len(emb.domains)
    eye = torch.eye(h.shape[1])
    rows, checked = [], False
    for paradigm in args.paradigms:
        for kw in PARADIGMS[paradigm]:
            if args.classes and kw.get("forget_classes", [None])[0] not in args.classes:
                continue
            request = ForgetRequest(emb.classnames, emb.domains, **kw)
            before = score(h, y, eye, T, colour_T, request, C, D)
            depth_before = depth(h, y, h_test, y_test, request)
            for name, overrides in args.variants.items():
                t0 = time.perf_counter()
                M, config = torch.eye(h.shape[1]), dict(overrides)
                parts = ([ForgetRequest(emb.classnames, emb.domains, forget_classes=[c], forget_domains=[d])
                          for c, d in request.forget_cells] if config.pop(ONE_BY_ONE, False) else [request])
                for i, part in enumerate(parts):  # one request, or its cells one after the other (composed)
                    M = unlearn_(emb.model, emb.tokenizer, part, progress=False, compose=i > 0, **config).maps["image"] @ M
                seconds = time.perf_counter() - t0
                if not checked:  # the cached-embedding shortcut equals the edited model's forward pass
                    with torch.no_grad():
                        direct = emb.model.encode_image(x[:64]).float()
                    assert torch.allclose(direct, h[:64] @ M.T, atol=1e-4), "edit is not M h at the joint site"
                    checked = True
                restore_(emb.model)
                after = score(h, y, M, T, colour_T, request, C, D)
                row = {"paradigm": paradigm, "forget": [list(c) for c in request.forget_cells], "variant": name,
                       "overrides": overrides, "before": before, "after": after, "seconds": round(seconds, 2),
                       "test_before": score(h_test, y_test, eye, T, colour_T, request, C, D),
                       "test_after": score(h_test, y_test, M, T, colour_T, request, C, D),
                       "depth_before": depth_before, "depth_after": depth(h @ M.T, y, h_test @ M.T, y_test, request)}
                rows.append(row)
                if args.json:  # every row as it comes: a long sweep can be stopped and still summarised
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps({"rows": rows, "n_per_cell": args.n_per_cell}, indent=1))
                sc = after["same_class_other_domains_acc"]
                print(f"{name:14s} {request.describe()[:58]:58s} forget {after['forget_acc']:.3f} retain drop "
                      f"{100 * (before['retain_acc'] - after['retain_acc']):+.1f} same "
                      f"{'-' if sc is None else format(100 * (before['same_class_other_domains_acc'] - sc), '+.1f')} "
                      f"colour {100 * (before['unrelated_acc'] - after['unrelated_acc']):+.1f} probe "
                      f"{row['depth_after']['probe_balanced_acc']:.3f} {seconds:.1f}s",
                      flush=True)
    return {"rows": rows, "n_per_cell": args.n_per_cell, "split": "val", "defaults": repr(UnlearnConfig())}


def summary(result: dict, split: str = "val") -> str:
    """Per (paradigm, variant): forget mean / worst and drops in points, on ``split`` ("val" or "test")."""
    key = {"val": ("before", "after"), "test": ("test_before", "test_after")}[split]
    groups = {}
    for r in result["rows"]:
        r = r | {"before": r[key[0]], "after": r[key[1]]}
        groups.setdefault((r["paradigm"], r["variant"]), []).append(r)
    lines = ["| paradigm | variant | requests | forget mean / worst (worst request) | retain drop mean / worst | "
             "same-class drop worst | colour drop worst | worst forgotten cell / worst retained cell (drop, points) | "
             "probe bal. acc raw / normalised (test), mean |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (paradigm, name), rs in groups.items():
        drop = lambda k: [100 * (r["before"][k] - r["after"][k])  # noqa: E731
                          for r in rs if r["before"][k] is not None]
        fa = [r["after"]["forget_acc"] for r in rs]
        worst = max(rs, key=lambda r: r["after"]["forget_acc"])
        sc = drop("same_class_other_domains_acc")
        wf, wr = worst_of(rs, "before", "after")
        cells = "-" if wf is None else (f"{'/'.join(wf['cell'])} {wf['acc']:.2f} / "
                                        f"{'/'.join(wr['cell'])} {wr['drop_points']:.1f}")
        lines.append(f"| {paradigm} | {name} | {len(rs)} | {sum(fa) / len(fa):.3f} / {max(fa):.3f} "
                     f"({'+'.join('/'.join(c) for c in worst['forget'][:2])}) | "
                     f"{sum(drop('retain_acc')) / len(rs):.2f} / {max(drop('retain_acc')):.2f} | "
                     f"{max(sc) if sc else float('nan'):.2f} | {max(drop('unrelated_acc')):.2f} | {cells} | "
                     f"{probes(rs)} |")
    return "\n".join(lines)


def probes(rows) -> str:
    """Mean binary-probe balanced accuracy (raw / normalised) after the edit; "-" for older results."""
    got = [r["depth_after"] for r in rows if "depth_after" in r]
    if not got:
        return "-"
    mean = lambda k: sum(g[k] for g in got) / len(got)  # noqa: E731
    return f"{mean('probe_balanced_acc'):.3f} / {mean('probe_balanced_acc_normalised'):.3f}"


def _variant(text: str) -> tuple[str, dict]:
    """``name=key=JSON,key=JSON`` (``name=`` alone: the defaults)."""
    name, _, rest = text.partition("=")
    overrides = {}
    for item in filter(None, rest.split(";")):
        k, _, v = item.partition("=")
        overrides[k] = json.loads(v)
    return name, overrides


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--n-per-cell", type=int, default=20)
    p.add_argument("--paradigms", default="domain-specific")
    p.add_argument("--classes", default=None, help="comma list: only requests whose first forgotten class is here")
    p.add_argument("--merge", nargs="+", type=Path, default=None, help="only summarise these JSON results into --json")
    p.add_argument("--variant", action="append", type=_variant, default=[],
                   help=f"NAME=key=JSON;key=JSON (repeatable; NAME= alone runs the defaults; {ONE_BY_ONE}=true "
                        "applies a request's cells one at a time, composed)")
    args = p.parse_args(argv)
    args.paradigms = args.paradigms.split(",")
    args.classes = args.classes.split(",") if args.classes else None
    args.variants = dict(args.variant) or {"default": {}}
    if args.merge:
        parts = [json.loads(f.read_text()) for f in args.merge]
        result = parts[0] | {"rows": [r for part in parts for r in part["rows"]]}
    else:
        result = run(args)
    table = summary(result)
    result["table"], result["table_test"] = table, summary(result, "test")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print("val split\n" + table + "\ntest split\n" + result["table_test"])


if __name__ == "__main__":
    main()
