"""Depth on the L2-normalised embedding too: iterate the eraser on the normalised means.

    python benchmarks/deep_research/exp7_normalised.py 80 [rounds]

The eraser of the deep mode equalises the raw class means of N train images per cell; the probe on
the normalised embedding still reads the class (the norms differ). Each round adds the gap of the
*normalised* erased train embeddings (forgotten group minus the retained cells' mean) to the erased
span. Probes: deep_sweep.measure (val fit, test scored). Global requests, every class.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.deep_sweep import REQUESTS, encode, images, measure  # noqa: E402
from lightning_unlearn import ForgetRequest, nullspace  # noqa: E402
from lightning_unlearn.data.world import CLASSES, DOMAINS  # noqa: E402
from lightning_unlearn.embedded import load_embedded  # noqa: E402
from lightning_unlearn.zeroshot import classifier  # noqa: E402

k = int(sys.argv[1]) if len(sys.argv) > 1 else 80
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
paradigms = sys.argv[3].split(",") if len(sys.argv) > 3 else ["global"]
torch.manual_seed(0)
emb = load_embedded()
xv, yv = images(emb, "val", 30)
xt, yt = images(emb, "test", 30)
xe, ye = images(emb, "train", k)
with torch.no_grad():
    Hv, Ht, He = encode(emb.model, xv), encode(emb.model, xt), encode(emb.model, xe)
T = classifier(emb.model, emb.tokenizer, emb.classnames, emb.templates).double()
Tc = classifier(emb.model, emb.tokenizer, emb.colours, emb.colour_templates).double()
cell_of = {c: (ye[:, 0] == CLASSES.index(c[0])) & (ye[:, 1] == DOMAINS.index(c[1])) for c in
           [(a, b) for a in CLASSES for b in DOMAINS]}


def gap(H, request, by):
    means = {c: H[m].mean(0) for c, m in cell_of.items()}
    rest = torch.stack([means[c] for c in request.retain_cells]).mean(0)
    groups = list(dict.fromkeys(c[by] for c in request.forget_cells))
    return torch.stack([torch.stack([means[c] for c in request.forget_cells if c[by] == g]).mean(0) - rest
                        for g in groups], 1)


for paradigm, kw in [r for r in REQUESTS if r[0] in paradigms]:
    request = ForgetRequest(CLASSES, DOMAINS, **kw)
    by = 1 if paradigm == "domain" else 0
    U = gap(He, request, by)
    for r in range(rounds + 1):
        E = nullspace.oblique_eraser(U)
        m = measure(Hv @ E.T, yv, Ht @ E.T, yt, request, T, Tc)
        print(f"{paradigm:15s} {request.describe()[:40]:40s} round {r} rank {U.shape[1]} bal_raw={m['probe_bal_raw']:.3f} "
              f"bal_norm={m['probe_bal_norm']:.3f} zs_forget={m['zs_forget']:.3f} zs_retain={m['zs_retain']:.3f} "
              f"colour={m['colour']:.3f} retain_acc={m['probe_retain_acc']:.3f}", flush=True)
        U = torch.cat([U, gap(F.normalize(He @ E.T, dim=-1), request, by)], 1)
