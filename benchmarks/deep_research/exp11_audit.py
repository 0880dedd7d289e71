"""The whole depth audit (lightning_unlearn.audit, as benchmarks/unlearning.py runs it) of the
composed deep edit with real images of every cell, beside the shallow edit: paraphrases, k-NN,
retrieval and the tower's inner layers, not only the probes.

    python benchmarks/deep_research/exp11_audit.py [k] [requests per paradigm]

30 val images per cell fit the probes, 30 test images per cell are scored; k train images of every
cell are the evidence.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.deep_sweep import REQUESTS, evidence_of, images  # noqa: E402
from benchmarks.unlearning import DEPTH_KEYS, depth, measure, prepare  # noqa: E402
from lightning_unlearn import ForgetRequest, restore_, unlearn_  # noqa: E402
from lightning_unlearn.audit import extract  # noqa: E402
from lightning_unlearn.data.datasets import rendered_batches  # noqa: E402
from lightning_unlearn.data.world import CLASSES, DOMAINS  # noqa: E402

k = int(sys.argv[1]) if len(sys.argv) > 1 else 80
limit = int(sys.argv[2]) if len(sys.argv) > 2 else 1
emb, batches, colour_T = prepare(30)
fit_batches = rendered_batches("val", 30, emb.preprocess)
xe, ye = images(emb, "train", k)
cells = [(c, d) for c in CLASSES for d in DOMAINS]
evidence = evidence_of({"xe": xe, "ye": ye}, cells, k)
model = emb.model
unedited = extract(model, fit_batches), extract(model, batches)
picked = [r for i, r in enumerate(REQUESTS) if sum(q[0] == r[0] for q in REQUESTS[:i]) < limit and r[0] != "domain"]
for paradigm, kw in picked:
    request = ForgetRequest(CLASSES, DOMAINS, **kw)
    before = depth(model, emb, request, fit_batches, batches, unedited)
    print(f"{paradigm:15s} {request.describe()[:44]:44s} {'unedited':24s} "
          + " ".join(f"{key}={before[key]:.3f}" for key in DEPTH_KEYS if before.get(key) is not None), flush=True)
    for name, extra in [("shallow", {}), ("deep+every-cell", {"depth": "deep", "evidence": evidence}),
                        ("deep+every-cell+text", {"depth": "deep", "evidence": evidence,
                                                  "towers": ("image", "text")})]:
        unlearn_(model, emb.tokenizer, request, progress=False, **extra)
        zs = measure(model, emb, batches, request, colour_T)
        after = depth(model, emb, request, fit_batches, batches, before=before)
        restore_(model)
        print(f"{paradigm:15s} {request.describe()[:44]:44s} {name:24s} forget={zs['forget_acc']:.3f} "
              f"retain={zs['retain_acc']:.3f} colour={zs['unrelated_acc']:.3f} "
              + " ".join(f"{key}={after[key]:.3f}" for key in DEPTH_KEYS if after.get(key) is not None), flush=True)
