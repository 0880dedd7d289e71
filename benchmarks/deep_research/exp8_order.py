"""Eraser before or after the surface edit, with 80 train images of every cell (the real edits).

    python benchmarks/deep_research/exp8_order.py [k] [requests per paradigm]

pre  (the library): M = M_s E, E from the unedited embeddings, M_s fitted on prototypes read through E
post: M = E' M_s, M_s the shallow edit, E' from the embeddings the shallow edit outputs
Both with the normalised gap (evidence of every cell); pre-free: the library's data-free deep edit.
Probes as deep_sweep.measure. The deep maps are computed with the library's own steps
(deep.output_eraser, then edit.compute_map with pre=E), not unlearn_, which refuses whole domains
in the deep mode since this measurement.
"""
from __future__ import annotations

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.deep_sweep import REQUESTS, cell_rows, encode, measure, research_setup  # noqa: E402
from lightning_unlearn import ForgetRequest, UnlearnConfig, deep, restore_, unlearn_  # noqa: E402
from lightning_unlearn.edit import compute_map  # noqa: E402
from lightning_unlearn.sites import find_site  # noqa: E402
from lightning_unlearn.data.world import CLASSES, DOMAINS  # noqa: E402

k = int(sys.argv[1]) if len(sys.argv) > 1 else 80
limit = int(sys.argv[2]) if len(sys.argv) > 2 else 2
emb, D, evidence = research_setup(20, k)
model, cells = emb.model, list(evidence)
xv, yv, xt, yt, ye, T, Tc = (D[key] for key in ("xv", "yv", "xt", "yt", "ye", "T", "Tc"))
Hv, Ht, He = encode(model, xv), encode(model, xt), encode(model, D["xe"])
picked = [r for i, r in enumerate(REQUESTS) if sum(q[0] == r[0] for q in REQUESTS[:i]) < limit]
cfg = UnlearnConfig(depth="deep")


def deep_map(request, evidence=None):
    """The image-tower map of a deep edit, as unlearn_ computes it."""
    E, _ = deep.output_eraser(model, emb.tokenizer, request, evidence=evidence, n_prototypes=cfg.deep_prototypes,
                              proto_steps=cfg.prototype_steps("eraser"), proto_lr=cfg.proto_lr, seed=cfg.seed,
                              class_templates=cfg.class_templates, progress=False)
    return compute_map(model, emb.tokenizer, request, find_site(model, "image"), cfg, False, pre=E)[0].double()


for paradigm, kw in picked:
    request = ForgetRequest(CLASSES, DOMAINS, **kw)
    u = unlearn_(model, emb.tokenizer, request, progress=False)
    Ms = u.maps["image"].double()
    restore_(model)
    Mpre, Mfree = deep_map(request, evidence), deep_map(request)
    Epost = deep.eraser({c: cell_rows(He, ye, c) @ Ms.T for c in cells}, request, normalised=True)
    for name, M in [("shallow", Ms), ("pre", Mpre), ("post", Epost @ Ms), ("pre-free", Mfree)]:
        r = measure(Hv @ M.T, yv, Ht @ M.T, yt, request, T, Tc)
        print(f"{paradigm:15s} {request.describe()[:48]:48s} {name:8s} " +
              " ".join(f"{a}={b:.3f}" for a, b in r.items() if b is not None), flush=True)
