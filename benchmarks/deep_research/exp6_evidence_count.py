"""How many real images does the output eraser need?  Fair references, every class.

    python benchmarks/deep_research/exp6_evidence_count.py 30 5,10,20,40,80,160,320,640 global
    python benchmarks/deep_research/exp6_evidence_count.py 30 5,20,80,320 domain-specific,domain

Probes are fitted on edited val embeddings and scored on edited test embeddings (deep_sweep.measure).
Variants of the eraser's cell means:
  oracle-val        real means from the val split: the probes' own fitting set (an optimistic reference)
  real-train-N      real means of every cell from N train images per cell (disjoint from val and test)
  ev-N+proto-rest   N train images per forgotten cell, retained cells from prototypes (the deep mode)
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.deep_sweep import REQUESTS, encode, images, measure, cell_mean  # noqa: E402
from lightning_unlearn import ForgetRequest, UnlearnConfig, deep  # noqa: E402
from lightning_unlearn.data.world import CLASSES, DOMAINS  # noqa: E402
from lightning_unlearn.embedded import load_embedded  # noqa: E402
from lightning_unlearn.zeroshot import classifier  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
NS = [int(k) for k in (sys.argv[2] if len(sys.argv) > 2 else "5,20,80").split(",")]
n_max = max(NS)
paradigms = sys.argv[3].split(",") if len(sys.argv) > 3 else ["global", "domain-specific"]
torch.manual_seed(0)
torch.set_grad_enabled(True)
emb = load_embedded()
t0 = time.time()
xv, yv = images(emb, "val", n)
xt, yt = images(emb, "test", n)
xe, ye = images(emb, "train", n_max)
with torch.no_grad():
    Hv, Ht, He = encode(emb.model, xv), encode(emb.model, xt), encode(emb.model, xe)
print(f"rendered+encoded {time.time() - t0:.0f} s", flush=True)
T = classifier(emb.model, emb.tokenizer, emb.classnames, emb.templates).double()
Tc = classifier(emb.model, emb.tokenizer, emb.colours, emb.colour_templates).double()
cfg = UnlearnConfig(depth="deep")
everything = ForgetRequest(CLASSES, DOMAINS, forget_classes=[CLASSES[0]])
proto, _ = deep.cell_embeddings(emb.model, emb.tokenizer, everything, n_prototypes=cfg.deep_prototypes,
                                proto_steps=cfg.prototype_steps("eraser"), proto_lr=cfg.proto_lr, seed=cfg.seed,
                                class_templates=cfg.class_templates, progress=False)
cells = list(proto)
# the first k train images of every cell (the train split is rendered in a fixed order)
idx = {c: ((ye[:, 0] == CLASSES.index(c[0])) & (ye[:, 1] == DOMAINS.index(c[1]))).nonzero().flatten() for c in cells}
real = lambda k: {c: He[idx[c][:k]].mean(0) for c in cells}  # noqa: E731
val = {c: cell_mean(Hv, yv, c) for c in cells}
rows = []
out = Path(f"runs/exp6_evidence_count_{'_'.join(paradigms)}.json")
for paradigm, kw in [r for r in REQUESTS if r[0] in paradigms]:
    request = ForgetRequest(CLASSES, DOMAINS, **kw)
    variants = {"none": None, "oracle-val": val}
    for k in NS:
        variants[f"real-train-{k}"] = real(k)
        variants[f"ev-{k}+proto-rest"] = proto | {c: real(k)[c] for c in request.forget_cells}
    for name, m in variants.items():
        E = torch.eye(Hv.shape[1], dtype=torch.float64) if m is None else deep.eraser(m, request)
        r = measure(Hv @ E.T, yv, Ht @ E.T, yt, request, T, Tc)
        rows.append({"paradigm": paradigm, "forget": request.describe(), "variant": name} | r)
        print(f"{paradigm:15s} {request.describe():28s} {name:20s} bal_raw={r['probe_bal_raw']:.3f} "
              f"zs_forget={r['zs_forget']:.3f} zs_retain={r['zs_retain']:.3f} colour={r['colour']:.3f} "
              f"recall={r['probe_recall']:.3f}", flush=True)
    out.write_text(json.dumps({"n_per_cell": n, "train_counts": NS, "rows": rows}, indent=1))
# summary: mean (worst) probe_bal_raw per paradigm and variant
from collections import defaultdict  # noqa: E402
g = defaultdict(list)
for r in rows:
    g[(r["paradigm"], r["variant"])].append(r)
for (p, v), rs in g.items():
    b = [r["probe_bal_raw"] for r in rs]
    zr = [r["zs_retain"] for r in rs]
    print(f"{p:15s} {v:20s} runs={len(rs):2d} bal_raw {sum(b)/len(b):.3f} ({max(b):.3f})  zs_retain min {min(zr):.3f}")
