"""Research scratch for the deep mode: cache pooled features of val/test/evidence images and probe edits.

    python benchmarks/deep_research/common.py cache --n 30   (then exp1_prototypes.py 60, then exp2..exp5 with a class index)
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_unlearn.data.world import World  # noqa: E402
from lightning_unlearn.embedded import load_embedded  # noqa: E402
from lightning_unlearn.sites import find_site  # noqa: E402

CACHE = Path("runs/deep_cache.pt")


def features(emb, split, n):
    w = World(split, n)
    s = [w[i] for i in range(len(w))]
    x = torch.stack([emb.preprocess(a.image) for a in s])
    y = torch.tensor([(a.cls, a.domain, a.colour) for a in s])
    site = find_site(emb.model, "image")
    with torch.no_grad():
        pooled = torch.cat([site.pooled(x[i:i + 400]) for i in range(0, len(x), 400)])
    return pooled, y, x


def cache(n, n_ev=5):
    torch.manual_seed(0)
    emb = load_embedded()
    out = {}
    for split, k in [("val", n), ("test", n), ("train", n_ev)]:
        p, y, x = features(emb, split, k)
        out[split] = {"pooled": p, "y": y}
        if split == "train":
            out[split]["x"] = x
    out["proj"] = emb.model.visual.proj.detach().clone()
    torch.save(out, CACHE)


# ---------- probes ----------
def fit_lr(X, y, n_cls, l2=1e-3, iters=200, balanced=False):
    X = X.double()
    mu, sd = X.mean(0), X.std(0).clamp(min=1e-8)
    Z = (X - mu) / sd
    W = torch.zeros(Z.shape[1], n_cls, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_cls, dtype=torch.float64, requires_grad=True)
    w = None
    if balanced:
        cnt = torch.bincount(y, minlength=n_cls).double()
        w = (len(y) / (n_cls * cnt.clamp(min=1)))
    opt = torch.optim.LBFGS([W, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(Z @ W + b, y, weight=w) + l2 * (W ** 2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return lambda Xt: (((Xt.double() - mu) / sd) @ W + b).argmax(1)


def balanced_acc(pred, y):
    return 0.5 * (float((pred[y == 1] == 1).float().mean()) + float((pred[y == 0] == 0).float().mean()))


def probes(Hv, yv, Ht, yt, forget_mask_v, forget_mask_t, n_cls=10):
    """Binary probe balanced acc (raw, normalised) and 10-class recall on forgotten / acc on the rest."""
    out = {}
    for name, f in [("raw", lambda h: h), ("norm", lambda h: F.normalize(h, dim=-1))]:
        clf = fit_lr(f(Hv), forget_mask_v.long(), 2, balanced=True)
        out[f"bal_{name}"] = balanced_acc(clf(f(Ht)), forget_mask_t.long())
    clf = fit_lr(Hv, yv, n_cls)
    pred = clf(Ht)
    out["recall"] = float((pred[forget_mask_t] == yt[forget_mask_t]).float().mean())
    out["retain_acc"] = float((pred[~forget_mask_t] == yt[~forget_mask_t]).float().mean())
    return out


if __name__ == "__main__":
    if sys.argv[1] == "cache":
        cache(int(sys.argv[3]) if len(sys.argv) > 3 else 30)


# ---------- experiment helpers ----------
def load():
    return torch.load(CACHE)


def zs_split(H, y, T, request, Tc=None):
    pred = (F.normalize(H, dim=-1) @ T).argmax(1)
    cls, dom = y[:, 0], y[:, 1]
    fm = forget_mask(y, request)
    ok = pred == cls
    same = torch.zeros_like(fm)
    for c in request.forget_classes:
        same |= (cls == request.classnames.index(c))
    same &= ~fm
    out = {"zs_forget": float(ok[fm].float().mean()), "zs_retain": float(ok[~fm].float().mean()),
           "zs_same": float(ok[same].float().mean()) if same.any() else None}
    if Tc is not None:
        out["colour"] = float(((F.normalize(H, dim=-1) @ Tc).argmax(1) == y[:, 2]).float().mean())
    return out


def forget_mask(y, request):
    m = torch.zeros(len(y), dtype=torch.bool)
    for c, d in request.forget_cells:
        m |= (y[:, 0] == request.classnames.index(c)) & (y[:, 1] == request.domains.index(d))
    return m


def same_mask(y, request):
    fm = forget_mask(y, request)
    s = torch.zeros_like(fm)
    for c in request.forget_classes:
        s |= y[:, 0] == request.classnames.index(c)
    return s & ~fm


def full_eval(cache, M, request, T, Tc):
    P = cache["proj"].double()
    Mv = M.double()
    out = {}
    Hv = cache["val"]["pooled"].double() @ P @ Mv.T
    Ht = cache["test"]["pooled"].double() @ P @ Mv.T
    yv, yt = cache["val"]["y"], cache["test"]["y"]
    out |= zs_split(Ht, yt, T.double(), request, Tc.double())
    pr = probes(Hv, yv[:, 0], Ht, yt[:, 0], forget_mask(yv, request), forget_mask(yt, request))
    out |= pr
    sm = same_mask(yt, request)
    if sm.any():
        clf = fit_lr(Hv, yv[:, 0], 10)
        out["recall_same"] = float((clf(Ht)[sm] == yt[sm, 0]).float().mean())
    return out
