"""With real images of every cell, the composed deep edit leaves some zero-shot (the erased images sit
at the rest's centroid, where the forgotten prompt ties with the others). Does editing the text tower
too (towers=("image", "text")) take the forgotten prompt away?  Real edits, zero-shot with the
edited text tower.

    python benchmarks/deep_research/exp9_text_tower.py [k] [requests per paradigm]
"""
from __future__ import annotations

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.deep_sweep import REQUESTS, encode, measure, research_setup  # noqa: E402
from lightning_unlearn import ForgetRequest, restore_, unlearn_  # noqa: E402
from lightning_unlearn.data.world import CLASSES, DOMAINS  # noqa: E402
from lightning_unlearn.zeroshot import classifier  # noqa: E402

k = int(sys.argv[1]) if len(sys.argv) > 1 else 80
limit = int(sys.argv[2]) if len(sys.argv) > 2 else 2
emb, D, evidence = research_setup(20, k)
model = emb.model
xv, yv, xt, yt = (D[key] for key in ("xv", "yv", "xt", "yt"))
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
