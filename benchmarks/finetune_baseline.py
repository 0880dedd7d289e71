"""Fine-tuning baseline: Kravets & Namboodiri, "Zero-Shot Class Unlearning in CLIP with Synthetic
Samples" (WACV 2025, arXiv 2407.07485), ported from the authors' code (GitHub repository
akres001/Zero-Shot-Class-Unlearning-in-CLIP-with-Synthetic-Samples). What follows the official
code, file by file, and what is adapted to the embedded model:

Synthetic forget images (``clip_forget_imagegen.py``, ``generate_images``; ``gen_data.py``)
  64 images per forgotten class (``n_generated``), each from Gaussian noise in the normalised
  input space, by gradient ascent on the class logit ``logit_scale * cos(E_i(x), T_c)`` minus
  ``1e-3 ||x||`` with a step of fixed length (``lr * grad / ||grad||``, lr 25), random jitter
  (up to 16 of 224 px) undone after the step, pixel clamping, a Gaussian blur (sigma 0.5) every 10
  steps, up to 3000 steps; an image is kept once the classifier (min-max rescaled image, softmax of
  ``100 cos``) gives its class the argmax and probability > ``high_prob`` (0.8); after an image that
  fails the 3000 steps, ``high_prob`` drops by 0.025 (floor 0.45). The training and evaluation
  inputs are the min-max rescaled images (``deprocess``) renormalised (``ForgetDataset``).
  Adapted: the 32-px model gets jitter and step length scaled to its input (2 px; step length
  ``25 sqrt(3 * 32^2 / (3 * 224^2))`` so the per-pixel step matches), its own mean/std in both
  places (the official code mixes SqueezeNet statistics for clamping with CLIP's for the input),
  and all images are optimised as one batch, each with its own stop (the same per-image rule; the
  lowered threshold after a failure applies to that image, not to all later ones). The classifier
  is the repository's zero-shot classifier (5 class templates) where the official code uses one
  template per dataset.

Loss (``clip_forget_losses.py``, ``lipschitz_loss_joint``; called by ``train_epoch`` in
``clip_forget_utils.py``)
  ``sum_i (||E_t(t_i) - E_i(x'_i)|| + ||E_i(x_i) - E_i(x'_i)||) / (2 ||x_i - x'_i||)`` averaged over
  ``2 n_samples`` (n_samples = 10, ``train_forget.py`` default), on raw (unnormalised) embeddings;
  ``E_i(x')`` under ``torch.no_grad()`` (a fixed target); the gradient flows through the text
  embedding ``E_t(t)`` (prompt "A picture of {}", ``ForgetDataset``) and the clean image embedding
  ``E_i(x)``. Noise (``AddGaussianNoise`` in ``clip_forget_utils.py``): ``x + sigma N(0, 1)``
  clamped to the batch's own [min, max].

Training loop (``train_forget.py``, main loop; ``train_utils.py``)
  Adam over the whole model, lr 5e-5, betas (0.9, 0.98), eps 1e-6, weight decay 0.2
  (``get_model_optim``); the 64 images form one batch (``BATCH_SIZE``), so one optimiser step per
  epoch; after ``backward`` only the top-k tensors by mean |grad| of ``visual`` and of the text
  ``transformer`` keep their gradient (``get_important_params_mask``, re-chosen every step), k = 25
  per tower for ViT (``set_hyperparameters``); after every step the zero-shot classifier is rebuilt
  from the updated text tower (``clip_classifier``) and the synthetic accuracy checked; at the end
  of an epoch, if the synthetic accuracy did not go below the best so far, model and optimiser are
  rolled back to the start of the epoch and the schedule advances: sigma in
  [0.1, 0.3, 0.5, 0.7, 1, 1.5, 2], k + [0, 2, 5, 8, 10, 15, 20] (``set_param_schedules``; the run
  ends when the schedule is exhausted); at most 30 epochs (``max_epochs``); stop once the
  synthetic accuracy is <= ``min_train_acc_stop`` (0.2 by default in ``train_forget.py``; set per
  run in ``train.sh``); the best model (lowest synthetic accuracy) is returned, or, when no epoch
  lowered it, the model of the last failed epoch as it was before its roll-back.

Adapted for tuning (reported as such): ``lr`` and ``steps_per_epoch`` (optimiser steps on the full
batch inside one epoch, each followed by the accuracy check; the official value is 1).
Domains: the method has none. For a domain-specific or whole-domain request the 64 images are
split evenly over the forgotten (class, domain) cells (at least one each; 64 for one cell, 6 per
cell for a whole domain of 10 classes) and synthesised towards the cell's prompt (the request's
first cell template, class + domain) with the class-classifier stop rule; the training text is
that cell prompt; the synthetic accuracy (the stop criterion) is over all forgotten cells' images.
It lives in benchmarks/, not in the library: it is the baseline we compare against.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lightning_unlearn.prompts import fill_template
from lightning_unlearn.prototypes import model_io
from lightning_unlearn.zeroshot import classifier, text_embeddings

SIGMAS = (0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)  # train_utils.set_param_schedules
TOPK_STEPS = (0, 2, 5, 8, 10, 15, 20)  # ViT schedule (train_utils.set_param_schedules)
BATCH = 64  # train_forget.py BATCH_SIZE


@dataclass(frozen=True)
class Recipe:
    """The official values (see the module docstring); ``lr`` and ``steps_per_epoch`` are tuned."""
    lr: float = 5e-5
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.2
    steps_per_epoch: int = 1
    max_epochs: int = 30
    n_images: int = 64
    n_samples: int = 10
    topk: int = 25
    stop_acc: float = 0.2
    prompt: str = "A picture of {}"
    high_prob: float = 0.8
    synth_steps: int = 3000
    seed: int = 0


def lipschitz_loss(model, text_tokens, x, sigma: float, n_samples: int) -> torch.Tensor:
    """The official joint Lipschitz loss on raw embeddings; ``E_i(x')`` is a no-grad target."""
    e_txt = model.encode_text(text_tokens)
    e_img = model.encode_image(x)
    lo, hi = x.min(), x.max()
    loss = x.new_zeros(())
    for _ in range(n_samples):
        x2 = torch.clamp(x + sigma * torch.randn_like(x), min=lo, max=hi)
        with torch.no_grad():
            e_noisy = model.encode_image(x2)
        d_in = 2 * (x - x2).flatten(1).norm(dim=1)
        d_out = (e_txt - e_noisy).norm(dim=1) + (e_img - e_noisy).norm(dim=1)
        loss = loss + (d_out / d_in).sum().abs()
    return loss / (2 * n_samples)


def top_tensors(model, k: int) -> set[str]:
    """Names of the ``k`` tensors with the largest mean |grad| in ``visual`` and ``k`` in the text
    ``transformer`` (``get_important_params_mask``); every other tensor is left out."""
    chosen = set()
    for prefix in ("visual", "transformer"):
        scores = [(p.grad.abs().sum().item() / p.numel(), f"{prefix}.{n}")
                  for n, p in getattr(model, prefix).named_parameters() if p.grad is not None]
        chosen |= {name for _, name in sorted(scores, reverse=True)[:k]}
    return chosen


def mask_gradients_(model, keep: set[str]) -> None:
    for n, p in model.named_parameters():
        if n not in keep:
            p.grad = None


def _rescale_normalise(z, mean, std):
    """``deprocess`` (back to pixels, min-max rescaled per image) then the model's normalisation."""
    x = z * std + mean
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x - lo) / (hi - lo).clamp(min=1e-12) - mean) / std


def _blur(z, sigma: float = 0.5):
    r = torch.arange(-2, 3, dtype=z.dtype)
    k = torch.exp(-r ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = z.shape[1]
    z = F.conv2d(F.pad(z, (2, 2, 0, 0), mode="reflect"), k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(F.pad(z, (0, 0, 2, 2), mode="reflect"), k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def synthesize_forget_images(model, T, targets, labels, recipe: Recipe, generator) -> torch.Tensor:
    """``generate_images`` batched: one normalised image per row of ``targets`` (d, text embedding
    to ascend) with ``labels`` (its class index in ``T``, d x C) for the stop rule."""
    size, mean, std = model_io(model)
    n = len(labels)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    step_len = 25.0 * math.sqrt(3 * size * size / (3 * 224 * 224))
    jitter = max(1, round(16 * size / 224))
    scale = model.logit_scale.exp().detach()
    z = torch.randn(n, 3, size, size, generator=generator)
    done = torch.zeros(n, dtype=torch.bool)
    high = torch.full((n,), recipe.high_prob)
    it = torch.zeros(n, dtype=torch.long)
    for p in model.parameters():
        p.requires_grad_(False)
    while not done.all():
        ox, oy = (int(v) for v in torch.randint(0, jitter + 1, (2,), generator=generator))
        zr = z[~done].roll((oy, ox), (2, 3)).requires_grad_(True)
        h = F.normalize(model.encode_image(zr), dim=-1)
        score = scale * (h * targets[~done]).sum(-1) - 1e-3 * zr.flatten(1).norm(dim=1)
        (g,) = torch.autograd.grad(score.sum(), zr)
        g = g / g.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
        zn = (zr.detach() + step_len * g).roll((-oy, -ox), (2, 3))
        zn = torch.max(torch.min(zn, hi), lo)
        active = (~done).nonzero().squeeze(1)
        it[active] += 1
        if int(it[active[0]]) % 10 == 1:  # blur every 10 steps (t % 10 == 0, t from 0)
            zn = _blur(zn)
        z[active] = zn
        with torch.no_grad():
            e = F.normalize(model.encode_image(_rescale_normalise(zn, mean, std)), dim=-1)
            prob = (100 * e @ T).softmax(-1)
        own = prob.gather(1, labels[active][:, None]).squeeze(1)
        ok = (prob.argmax(-1) == labels[active]) & (own > high[active])
        done[active[ok]] = True
        failed = active[~ok & (it[active] >= recipe.synth_steps)]
        if len(failed):  # restart from noise with a lower threshold, as the official loop does
            z[failed] = torch.randn(len(failed), 3, size, size, generator=generator)
            high[failed] = (high[failed] - 0.025).clamp(min=0.45)
            it[failed] = 0
    return _rescale_normalise(z, mean, std)


def synthetic_accuracy(model, tokenizer, classnames, class_templates, x, labels) -> float:
    """``clip_classifier`` rebuilt from the current text tower, then accuracy on the images."""
    with torch.no_grad():
        T = classifier(model, tokenizer, classnames, class_templates)
        e = F.normalize(model.encode_image(x).float(), dim=-1)
    return float(((e @ T).argmax(-1) == labels).float().mean())


def forget_texts(request) -> list[tuple[str, str, str]]:
    """(class, synthesis target prompt, training prompt) per forgotten unit: the class for global
    requests (official), each forgotten (class, domain) cell otherwise (adaptation)."""
    if request.paradigm == "global":
        return [(c, None, None) for c in request.forget_classes]
    return [(c, fill_template(request.templates[0], c=c, d=d), fill_template(request.templates[0], c=c, d=d))
            for c, d in request.forget_cells]


def finetune_unlearn(model, tokenizer, request, class_templates, recipe: Recipe = Recipe(), log=None):
    """Return ``(fine-tuned copy, info)``; ``model`` itself is not changed. ``info["seconds"]`` is
    the time to criterion (synthesis + training) and ``info["converged"]`` whether it was met."""
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    model = copy.deepcopy(model).eval()
    classes = list(request.classnames)
    T = classifier(model, tokenizer, classes, class_templates)
    units = forget_texts(request)
    per = recipe.n_images if request.paradigm == "global" else max(1, recipe.n_images // len(units))
    labels, targets, prompts = [], [], []
    for c, target, prompt in units:
        tgt = T[:, classes.index(c)] if target is None else text_embeddings(model, tokenizer, [target])[0]
        labels += [classes.index(c)] * per
        targets.append(tgt.expand(per, -1))
        prompts += [recipe.prompt.format(c) if prompt is None else prompt] * per
    labels, targets = torch.tensor(labels), torch.cat(targets)
    x = synthesize_forget_images(model, T, targets, labels, recipe, gen).detach()
    t_synth = time.perf_counter() - t0
    tokens = tokenizer(prompts)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, betas=recipe.betas, eps=recipe.eps,
                           weight_decay=recipe.weight_decay)
    acc0 = synthetic_accuracy(model, tokenizer, classes, class_templates, x, labels)
    best_acc, best_state, failed_state, stage, steps, rollbacks, epochs, acc = 1.0, None, None, 0, 0, 0, 0, acc0
    batches = [slice(i, i + BATCH) for i in range(0, len(x), BATCH)]
    acc_step = min(len(batches), 5)  # gradient accumulation over up to 5 batches (train_forget.py)
    for epochs in range(1, recipe.max_epochs + 1):
        last_model, last_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
        for ii, b in enumerate([b for _ in range(recipe.steps_per_epoch) for b in batches]):
            model.train()
            loss = lipschitz_loss(model, tokens[b], x[b], SIGMAS[stage], recipe.n_samples) / acc_step
            loss.backward()
            mask_gradients_(model, top_tensors(model, recipe.topk + TOPK_STEPS[stage]))
            if (ii + 1) % acc_step == 0 or (ii + 1) % len(batches) == 0:
                opt.step()
                opt.zero_grad()
                steps += 1
            model.eval()
            acc = synthetic_accuracy(model, tokenizer, classes, class_templates, x, labels)
            if acc <= recipe.stop_acc:
                break
        if log:
            log(f"epoch {epochs} sigma {SIGMAS[stage]} loss {float(loss.detach()):.4f} synthetic acc {acc:.3f}")
        if acc < best_acc:
            best_acc, best_state = acc, copy.deepcopy(model.state_dict())
        else:  # roll back model and optimiser, advance the noise / top-k schedule
            failed_state = copy.deepcopy(model.state_dict())
            model.load_state_dict(last_model)
            opt.load_state_dict(last_opt)
            rollbacks += 1
            stage += 1
            if stage == len(SIGMAS):
                break
        if acc <= recipe.stop_acc:
            break
    # the best model; with none (no epoch lowered the accuracy) the official loop keeps the model
    # of the last failed epoch, from before its roll-back (``model_last_state_load``)
    model.load_state_dict(best_state if best_state is not None else failed_state)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), {
        "seconds": time.perf_counter() - t0, "synthesis_seconds": round(t_synth, 3), "steps": steps,
        "epochs": epochs, "rollbacks": rollbacks, "synthetic_acc_before": acc0, "synthetic_acc_after": best_acc,
        "converged": best_acc <= recipe.stop_acc, "n_images": len(x),
        "optimizer_steps_kept": max((int(v["step"]) for v in opt.state_dict()["state"].values()), default=0),
        "lr": recipe.lr,
        "steps_per_epoch": recipe.steps_per_epoch}
