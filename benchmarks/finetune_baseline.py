"""The fine-tuning baseline of Kravets & Namboodiri, "Zero-Shot Class Unlearning in CLIP with
Synthetic Samples" (WACV 2025, arXiv 2407.07485), as summarised in shared/design/method.md s.5.

1. Synthetic forget images from noise, optimised towards the forget cell's text until
   p(class) > 0.8 (we reuse the library's batched synthesiser; the paper uses normalised gradient
   ascent on the class logit, same inputs and stopping rule).
2. Fine-tune the image tower with the Lipschitz loss
   ``(||E_t(t) - E_i(x')|| + ||E_i(x) - E_i(x')||) / (2 ||x - x'||)`` over Gaussian perturbations
   ``x'`` (sigma from 0.1 upward), Adam lr 5e-5, weight decay 0.2, updating only the parameter
   tensors with the largest mean |grad|, until the synthetic forget accuracy is <= 0.1 (or the step
   cap). It lives in benchmarks/, not in the library: it is the baseline we compare against.
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from lightning_unlearn.directions import cell_texts
from lightning_unlearn.prototypes import normalise_images, synthesize
from lightning_unlearn.zeroshot import classifier


def finetune_unlearn(model, tokenizer, request, class_templates, *, n_images: int = 16, n_perturb: int = 25,
                     sigma: float = 0.1, lr: float = 5e-5, wd: float = 0.2, top_frac: float = 0.1,
                     max_steps: int = 300, stop_acc: float = 0.1, seed: int = 0, synth_steps: int = 300):
    """Return ``(edited_copy, info)``; ``model`` itself is not changed."""
    t0 = time.perf_counter()
    model = copy.deepcopy(model).train(False)
    torch.manual_seed(seed)
    T = classifier(model, tokenizer, request.classnames, class_templates)  # d x C, unchanged prompts
    cells = request.forget_cells
    texts = cell_texts(model, tokenizer, cells, request.templates)
    per_cell = max(1, n_images // len(cells)) if len(cells) > n_images else n_images
    protos = synthesize(model, texts, n_per_text=per_cell, steps=synth_steps, stop_prob=0.8,
                        classes=T.T, seed=seed, progress=False)
    x = normalise_images(model, protos.images).detach()
    labels = torch.tensor([request.classnames.index(c) for c, _ in cells]).repeat_interleave(per_cell)
    t_txt = texts.repeat_interleave(per_cell, 0)

    def forget_acc():
        with torch.no_grad():
            h = F.normalize(model.encode_image(x).float(), dim=-1)
        return float(((h @ T).argmax(-1) == labels).float().mean())

    params = [p for p in model.visual.parameters()]
    # Select the layers with the largest mean |grad| on the first batch.
    loss = _lipschitz(model, x, t_txt, n_perturb, sigma)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    scores = torch.tensor([0.0 if g is None else float(g.abs().mean()) for g in grads])
    k = max(1, int(top_frac * len(params)))
    chosen = [params[i] for i in scores.topk(k).indices.tolist()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in chosen:
        p.requires_grad_(True)
    opt = torch.optim.Adam(chosen, lr=lr, weight_decay=wd)
    acc0 = acc = forget_acc()
    step = 0
    while acc > stop_acc and step < max_steps:
        step += 1
        s = sigma * (1 + step / 100)  # sigma from 0.1 upward
        loss = _lipschitz(model, x, t_txt, n_perturb, s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0:
            acc = forget_acc()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), {"steps": step, "synthetic_forget_acc_before": acc0, "synthetic_forget_acc_after": acc,
                          "converged": acc <= stop_acc, "seconds": time.perf_counter() - t0,
                          "n_images": len(x), "trained_tensors": k}


def _lipschitz(model, x, t_txt, n_perturb, sigma):
    B = x.shape[0]
    idx = torch.randint(B, (min(B, 8),))  # a mini-batch of forget images
    xb = x[idx]
    xp = xb.repeat_interleave(n_perturb, 0)
    noise = sigma * torch.randn_like(xp)
    xp = xp + noise
    e = F.normalize(model.encode_image(xb).float(), dim=-1).repeat_interleave(n_perturb, 0)
    ep = F.normalize(model.encode_image(xp).float(), dim=-1)
    t = t_txt[idx].repeat_interleave(n_perturb, 0)
    num = (t - ep).norm(dim=-1) + (e - ep).norm(dim=-1)
    return (num / (2 * noise.flatten(1).norm(dim=-1))).mean()
