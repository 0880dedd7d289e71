"""Eraser before or after the surface edit, with 80 train images of every cell (the real edits).

    python benchmarks/deep_research/exp8_order.py [k] [requests per paradigm]

pre  (the library until now): M = M_s E, E from the unedited embeddings, M_s fitted on prototypes read through E
post: M = E' M_s, M_s the shallow edit, E' from the embeddings the shallow edit outputs
Both with the normalised gap (evidence of every cell). Probes as deep_sweep.measure.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.deep_sweep import REQUESTS, encode, images, measure, cell_rows  # noqa: E402
from lightning_unlearn import ForgetRequest, deep, restore_, unlearn_  # noqa: E402
from lightning_unlearn.data.world import CLASSES, DOMAINS  # noqa: E402
from lightning_unlearn.embedded import load_embedded  # noqa: E402
from lightning_unlearn.zeroshot import classifier  # noqa: E402

k = int(sys.argv[1]) if len(sys.argv) > 1 else 80
limit = int(sys.argv[2]) if len(sys.argv) > 2 else 2
torch.manual_seed(0)
torch.set_grad_enabled(True)
emb = load_embedded()
model = emb.model
xv, yv = images(emb, "val", 20)
xt, yt = images(emb, "test", 20)
xe, ye = images(emb, "train", k)
Hv, Ht, He = encode(model, xv), encode(model, xt), encode(model, xe)
T = classifier(model, emb.tokenizer, emb.classnames, emb.templates).double()
Tc = classifier(model, emb.tokenizer, emb.colours, emb.colour_templates).double()
cells = [(c, d) for c in CLASSES for d in DOMAINS]
evidence = {c: xe[(ye[:, 0] == CLASSES.index(c[0])) & (ye[:, 1] == DOMAINS.index(c[1]))] for c in cells}
picked = [r for i, r in enumerate(REQUESTS) if sum(q[0] == r[0] for q in REQUESTS[:i]) < limit]
for paradigm, kw in picked:
    request = ForgetRequest(CLASSES, DOMAINS, **kw)
    u = unlearn_(model, emb.tokenizer, request, progress=False)
    Ms = u.maps["image"].double()
    restore_(model)
    u = unlearn_(model, emb.tokenizer, request, depth="deep", evidence=evidence, progress=False)
    Mpre = u.maps["image"].double()
    restore_(model)
    Epost = deep.eraser({c: cell_rows(He, ye, c) @ Ms.T for c in cells}, request, normalised=True)
    for name, M in [("shallow", Ms), ("pre", Mpre), ("post", Epost @ Ms)]:
        r = measure(Hv @ M.T, yv, Ht @ M.T, yt, request, T, Tc)
        print(f"{paradigm:15s} {request.describe()[:48]:48s} {name:8s} " +
              " ".join(f"{a}={b:.3f}" for a, b in r.items() if b is not None), flush=True)
