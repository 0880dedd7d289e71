"""With real images of every cell, the composed deep edit leaves some zero-shot (the erased images sit
at the rest's centroid, where the forgotten prompt ties with the others). Does editing the text tower
too (towers=("image", "text")) take the forgotten prompt away?  Real edits, zero-shot with the
edited text tower.

    python benchmarks/deep_research/exp9_text_tower.py [k] [requests per paradigm]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.deep_sweep import REQUESTS, encode, images, measure  # noqa: E402
from lightning_unlearn import ForgetRequest, restore_, unlearn_  # noqa: E402
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
cells = [(c, d) for c in CLASSES for d in DOMAINS]
evidence = {c: xe[(ye[:, 0] == CLASSES.index(c[0])) & (ye[:, 1] == DOMAINS.index(c[1]))] for c in cells}
picked = [r for i, r in enumerate(REQUESTS) if sum(q[0] == r[0] for q in REQUESTS[:i]) < limit and r[0] != "domain"]
for paradigm, kw in picked:
    request = ForgetRequest(CLASSES, DOMAINS, **kw)
    for name, extra in [("shallow", {}), ("shallow+text", {"towers": ("image", "text")}),
                        ("deep-every", {"depth": "deep", "evidence": evidence}),
                        ("deep-every+text", {"depth": "deep", "evidence": evidence, "towers": ("image", "text")})]:
        unlearn_(model, emb.tokenizer, request, progress=False, **extra)
        T = classifier(model, emb.tokenizer, emb.classnames, emb.templates).double()
        Tc = classifier(model, emb.tokenizer, emb.colours, emb.colour_templates).double()
        r = measure(encode(model, xv), yv, encode(model, xt), yt, request, T, Tc)
        restore_(model)
        print(f"{paradigm:15s} {request.describe()[:48]:48s} {name:16s} " +
              " ".join(f"{a}={b:.3f}" for a, b in r.items() if b is not None), flush=True)
