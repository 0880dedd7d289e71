"""Would the surface edit forget the erased real images if its forgotten-cell prototypes were real
images?  (Scratch: the forgotten cells' prototype columns of the surface edit are replaced by
n_prototypes evidence images each; the eraser uses 80 train images of every cell.)

    python benchmarks/deep_research/exp10_real_surface.py [requests per paradigm] [paradigm]
"""
from __future__ import annotations

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.deep_sweep import REQUESTS, encode, measure, research_setup  # noqa: E402
from lightning_unlearn import ForgetRequest, directions, restore_, unlearn_  # noqa: E402
from lightning_unlearn.data.world import CLASSES, DOMAINS  # noqa: E402

limit = int(sys.argv[1]) if len(sys.argv) > 1 else 2
only = sys.argv[2] if len(sys.argv) > 2 else None
emb, D, evidence = research_setup(20, 80)
model = emb.model
xv, yv, xt, yt, T, Tc = (D[key] for key in ("xv", "yv", "xt", "yt", "T", "Tc"))
original = directions.prototype_columns
current = {}


def patched(model, site, where, targets, keys, classes, label_key, *, n_prototypes, normalise=True, **kw):
    cols, s = original(model, site, where, targets, keys, classes, label_key, n_prototypes=n_prototypes,
                       normalise=normalise, **kw)
    if normalise and current:
        request = current["request"]
        for i, cell in enumerate(request.forget_cells):
            x = evidence[cell][:current["n"]]
            real = directions.to_site(model, site, where, images=x, normalise=True)
            cols = cols.clone()
            cols[:, i * n_prototypes:(i + 1) * n_prototypes] = real[:, :n_prototypes]
    return cols, s


directions.prototype_columns = patched
picked = [r for i, r in enumerate(REQUESTS) if sum(q[0] == r[0] for q in REQUESTS[:i]) < limit and r[0] != "domain"
          and (only is None or r[0] == only)]
for paradigm, kw in picked:
    request = ForgetRequest(CLASSES, DOMAINS, **kw)
    for name, n_real in [("deep-every", 0), ("deep-every+real-surface", 4), ("deep-every+real-surface-16", 16)]:
        current.clear()
        if n_real:
            current.update(request=request, n=n_real)
        unlearn_(model, emb.tokenizer, request, progress=False, depth="deep", evidence=evidence,
                 n_prototypes=max(4, n_real))
        r = measure(encode(model, xv), yv, encode(model, xt), yt, request, T, Tc)
        restore_(model)
        print(f"{paradigm:15s} {request.describe()[:48]:48s} {name:24s} " +
              " ".join(f"{a}={b:.3f}" for a, b in r.items() if b is not None), flush=True)
