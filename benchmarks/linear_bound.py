"""Where the class x domain interaction lives in the image tower, and what the same linear layer
reaches at an edit site when it is fitted WITH real images (a data-aware reference).

    python benchmarks/linear_bound.py --json benchmarks/results/linear_bound.json

Interaction: per-cell means (10 classes x 4 domains) of L2-normalised test features, split as
mu_cd = g + a_c + b_d + i_cd; the table gives the shares of the centred energy in class (a),
domain (b) and interaction (i), which sum to 1, at the class token after each ViT block, at
``pooled`` (the projection's input) and at ``joint`` (its output).
Fitted bound: a map M (n x n, from identity, float64, Adam lr 1e-2, 400 steps, seed 0) fitted on
the val split (30 images per cell) with CE on retained images + -log(1 - p_true) on forget images
+ colour CE on all images + 1e-4 ||M - I||^2 (logit scale 50); at ``joint`` the edit is e = M f,
at ``pooled`` e = (M p) @ proj. Test accuracies (``--n-per-cell``) use the definitions of
``lightning_unlearn.zeroshot.request_accuracy``. The fit is one point of the forget / retain trade-off,
not its frontier; it shows what the site allows when the data is at hand.
Requests (fixed before any result was seen): the 8 domain-specific pairs of benchmarks/unlearning.py
(star/sketch, moon/sketch, heart/photo, square/photo, circle/cartoon, cross/cartoon,
arrow/painting, hexagon/painting), every whole domain (photo, sketch, cartoon, painting) and the
global classes star and heart.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.unlearning import DOMAIN_SPECIFIC, summary  # noqa: E402
from lightning_unlearn import ForgetRequest  # noqa: E402
from lightning_unlearn.data import DOMAINS, render_split  # noqa: E402
from lightning_unlearn.load import load_clip  # noqa: E402
from lightning_unlearn.sites import find_site  # noqa: E402
from lightning_unlearn.zeroshot import classifier, split_accuracy  # noqa: E402

REQUESTS = ([("domain-specific", {"forget_classes": [c], "forget_domains": [d]}) for c, d in DOMAIN_SPECIFIC]
            + [("domain", {"forget_domains": [d]}) for d in DOMAINS]
            + [("global", {"forget_classes": [c]}) for c in ("star", "heart")])
FIT_SITES = ("joint", "pooled")


@torch.no_grad()
def features(model, preprocess, split: str, n_per_cell: int, batch: int = 500) -> dict:
    """Labels (class, domain, colour) and features of a split: ``block1..N`` (class token after
    each ViT block), ``pooled`` and ``joint`` (= pooled @ proj, as VisionTransformer.forward)."""
    x, y = render_split(split, n_per_cell, preprocess)
    blocks = model.visual.transformer.resblocks
    assert model.visual.transformer.batch_first  # open_clip 3.x: (N, L, D), token 0 is the class token
    out = {f"block{i + 1}": [] for i in range(len(blocks))} | {"pooled": []}
    hooks = [b.register_forward_hook(lambda m, a, o, k=f"block{i + 1}": out[k].append(o[:, 0]))
             for i, b in enumerate(blocks)]
    try:
        pooled = find_site(model, "image").pooled
        for i in range(0, len(x), batch):
            out["pooled"].append(pooled(x[i:i + batch]))
    finally:
        for h in hooks:
            h.remove()
    feats = {k: torch.cat(v).double() for k, v in out.items()}
    feats["joint"] = feats["pooled"] @ model.visual.proj.double()
    return feats | {"y": y}


def interaction(f: torch.Tensor, y: torch.Tensor, C: int, D: int) -> dict:
    """Shares of the centred energy of the per-cell means in class, domain and interaction."""
    mu = torch.zeros(C, D, f.shape[1], dtype=f.dtype).index_put_((y[:, 0], y[:, 1]), F.normalize(f, dim=-1),
                                                                  accumulate=True)
    mu /= torch.bincount(y[:, 0] * D + y[:, 1], minlength=C * D).view(C, D, 1)
    g = mu.mean((0, 1))
    a, b = mu.mean(1) - g, mu.mean(0) - g
    total = ((mu - g) ** 2).sum()
    inter = mu - g - a[:, None] - b[None]
    return {"class": float(D * (a ** 2).sum() / total), "domain": float(C * (b ** 2).sum() / total),
            "interaction": float((inter ** 2).sum() / total)}


def embed(f: torch.Tensor, M: torch.Tensor, site: str, proj: torch.Tensor) -> torch.Tensor:
    """Normalised joint embeddings of site features ``f`` under the edit ``M``."""
    e = f @ M.T
    return F.normalize(e @ proj if site == "pooled" else e, dim=-1)


def fit(f, y, forget, site, proj, T, Tc, steps: int, scale: float = 50.0) -> torch.Tensor:
    n = f.shape[1]
    eye = torch.eye(n, dtype=f.dtype)
    torch.manual_seed(0)
    M = eye.clone().requires_grad_(True)
    opt = torch.optim.Adam([M], lr=1e-2)
    for _ in range(steps):
        e = embed(f, M, site, proj)
        logits = scale * e @ T
        p_true = logits.softmax(1)[forget, y[forget, 0]]
        loss = (F.cross_entropy(logits[~forget], y[~forget, 0]) - torch.log1p(-p_true.clamp(max=1 - 1e-9)).mean()
                + F.cross_entropy(scale * e @ Tc, y[:, 2]) + 1e-4 * ((M - eye) ** 2).sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return M.detach()


def measure(e, y, request, T, Tc) -> dict:
    """``lightning_unlearn.zeroshot.request_accuracy`` on precomputed embeddings."""
    C, D = len(request.classnames), len(request.domains)
    cell = y[:, 0] * D + y[:, 1]
    correct = torch.bincount(cell, weights=((e @ T).argmax(1) == y[:, 0]).double(), minlength=C * D).view(C, D)
    total = torch.bincount(cell, minlength=C * D).view(C, D)
    colour = float(((e @ Tc).argmax(1) == y[:, 2]).double().mean())
    return split_accuracy(correct, total, request) | {"unrelated_acc": colour}


def run(args) -> dict:
    t_start = time.perf_counter()
    torch.manual_seed(0)
    emb = load_clip("embedded")
    model, C, D = emb.model, len(emb.classnames), len(emb.domains)
    T = classifier(model, emb.tokenizer, emb.classnames, emb.templates).double()
    Tc = classifier(model, emb.tokenizer, emb.colours, emb.colour_templates).double()
    proj = model.visual.proj.detach().double()
    val, test = features(model, emb.preprocess, "val", 30), features(model, emb.preprocess, "test", args.n_per_cell)
    sites = [k for k in test if k != "y"]  # block1..N, pooled, joint
    inter = [{"site": s, **interaction(test[s], test["y"], C, D)} for s in sites]
    fitted = []
    for site, (paradigm, kw) in tqdm([(s, r) for s in FIT_SITES for r in REQUESTS], desc="fits"):
        request = ForgetRequest(emb.classnames, emb.domains, **kw)
        cells = [(emb.classnames.index(c), emb.domains.index(d)) for c, d in request.forget_cells]
        forget = torch.zeros(len(val["y"]), dtype=torch.bool)
        for c, d in cells:
            forget |= (val["y"][:, 0] == c) & (val["y"][:, 1] == d)
        eye = torch.eye(val[site].shape[1], dtype=torch.double)
        t0 = time.perf_counter()
        M = fit(val[site], val["y"], forget, site, proj, T, Tc, args.steps)
        seconds = time.perf_counter() - t0
        before, after = (measure(embed(test[site], m, site, proj), test["y"], request, T, Tc) for m in (eye, M))
        fitted.append({"site": site, "paradigm": paradigm, "forget": request.describe(),
                       **{f"{k}_before": v for k, v in before.items()}, **{f"{k}_after": v for k, v in after.items()},
                       "fit_seconds": round(seconds, 2)})
    return {"interaction": inter, "fitted": fitted, "n_per_cell": args.n_per_cell, "steps": args.steps,
            "total_seconds": round(time.perf_counter() - t_start, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--n-per-cell", type=int, default=100, help="test images per cell")
    p.add_argument("--steps", type=int, default=400, help="Adam steps per fitted map")
    args = p.parse_args(argv)
    result = run(args)
    # unlearning.py's summary table, one "method" per site; its "edit s" column is the fit time
    table, summ = summary({"runs": [r | {"method": f"fitted @ {r['site']}", "edit_seconds": r["fit_seconds"]}
                                    for r in result["fitted"]]})
    result |= summ
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print("| site | class | domain | interaction |\n|---|---|---|---|")
    for r in result["interaction"]:
        print(f"| {r['site']} | {r['class']:.1%} | {r['domain']:.1%} | {r['interaction']:.2%} |")
    print()
    print(table)
    print(f"total {result['total_seconds']} s; wrote {args.json}")


if __name__ == "__main__":
    main()
