"""Train the embedded CLIP from scratch on the rendered world (deterministic, CPU).

    python scripts/train_embedded_clip.py                  # the shipped model's settings
    python scripts/train_embedded_clip.py --steps 200      # a quick smoke run

Captions mix domain, class and colour words ("a sketch of a red star.") plus class-only,
domain-only and colour-only captions. Identical or compatible captions in a batch are soft
positives: caption j is a positive for image i when every attribute it names matches image i.
Writes ``<out>/world-clip.safetensors`` (fp16) and ``<out>/world-clip.train.json`` (settings,
time, validation accuracy per checkpoint).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_unlearn import embedded, zeroshot  # noqa: E402
from lightning_unlearn.data.world import CLASSES, COLOUR_NAMES, DOMAINS, World  # noqa: E402
from lightning_unlearn.prompts import CELL_TEMPLATES, CLASS_TEMPLATES, DOMAIN_TEMPLATES, fill_template  # noqa: E402

MEAN = open_clip.OPENAI_DATASET_MEAN
STD = open_clip.OPENAI_DATASET_STD


def _render_one(args):
    world, i = args
    s = world[i]
    return np.asarray(s.image), (s.cls, s.domain, s.colour)


def render(world: World, desc: str, workers: int = 1):
    """All images of ``world`` as a uint8 N x 3 x H x W tensor and N x 3 labels (in index order)."""
    jobs = ((world, i) for i in range(len(world)))
    with multiprocessing.Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        it = pool.imap(_render_one, jobs, chunksize=256) if pool else map(_render_one, jobs)
        out = list(tqdm(it, total=len(world), desc=desc, mininterval=5))
    imgs = np.stack([o[0] for o in out])
    labels = np.array([o[1] for o in out], np.int64)
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def to_input(x_uint8: torch.Tensor) -> torch.Tensor:
    mean, std = (torch.tensor(v, device=x_uint8.device).view(1, 3, 1, 1) for v in (MEAN, STD))
    return (x_uint8.float() / 255.0 - mean) / std


# (caption kind, probability); each kind names a subset of (domain, colour, class).
KINDS = [("dcc", 0.45), ("dc", 0.2), ("cc", 0.1), ("c", 0.1), ("col", 0.08), ("d", 0.07)]


def caption(kind: str, c: int, d: int, col: int, rng: np.random.Generator) -> tuple[str, tuple]:
    cn, dn, coln = CLASSES[c], DOMAINS[d], COLOUR_NAMES[col]
    pick = lambda ts: ts[rng.integers(len(ts))]  # noqa: E731
    if kind == "dcc":
        return fill_template(pick(CELL_TEMPLATES), c=f"{coln} {cn}", d=dn), (d, col, c)
    if kind == "dc":
        return fill_template(pick(CELL_TEMPLATES), c=cn, d=dn), (d, -1, c)
    if kind == "cc":
        return f"a {coln} {cn}.", (-1, col, c)
    if kind == "c":
        return fill_template(pick(CLASS_TEMPLATES[:1]), c=cn), (-1, -1, c)
    if kind == "col":
        return fill_template(pick(embedded.COLOUR_TEMPLATES), c=coln), (-1, col, -1)
    return fill_template(pick(DOMAIN_TEMPLATES), d=dn), (d, -1, -1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--n-per-cell", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=embedded.ASSETS)
    p.add_argument("--device", default="cpu", help="cpu or cuda (the shipped weights: see world-clip.train.json)")
    p.add_argument("--workers", type=int, default=1, help="processes rendering the training set")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    t_start = time.time()

    name = embedded.register()
    model = open_clip.create_model(name).to(args.device)
    tokenizer = open_clip.get_tokenizer(name)
    x_train, y_train = render(World("train", args.n_per_cell, seed=args.seed), "render train", args.workers)
    x_train = x_train.to(args.device)
    x_val, y_val = render(World("val", 10, seed=args.seed), "render val", args.workers)
    val_batches = [(to_input(x_val[i:i + 200]), y_val[i:i + 200, 0], y_val[i:i + 200, 1], y_val[i:i + 200, 2])
                   for i in range(0, len(x_val), 200)]

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.wd, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    kinds, probs = [k for k, _ in KINDS], np.array([p for _, p in KINDS])
    token_cache: dict[str, torch.Tensor] = {}
    history = []
    bar = tqdm(range(1, args.steps + 1), desc="train", mininterval=10)
    for step in bar:
        model.train()
        idx = torch.from_numpy(rng.integers(len(x_train), size=args.batch))
        x = to_input(x_train[idx.to(args.device)])
        flip = torch.from_numpy(rng.random(args.batch) < 0.5).to(args.device)
        x[flip] = x[flip].flip(-1)
        y = y_train[idx]
        caps, attrs = zip(*[caption(kinds[rng.choice(len(kinds), p=probs)], int(c), int(d), int(col), rng)
                            for c, d, col in y.tolist()])
        for t in caps:
            if t not in token_cache:
                token_cache[t] = tokenizer([t])[0]
        tokens = torch.stack([token_cache[t] for t in caps]).to(args.device)
        a = torch.tensor(attrs)  # B x 3: (domain, colour, class), -1 = not named
        img_attr = y[:, [1, 2, 0]]
        match = ((a[None] == img_attr[:, None]) | (a[None] < 0)).all(-1).float().to(args.device)  # image x caption
        img_f, txt_f, scale = model(x, tokens)
        logits = scale * img_f @ txt_f.T
        loss = 0.5 * (F.cross_entropy(logits, match / match.sum(1, keepdim=True))
                      + F.cross_entropy(logits.T, match.T / match.T.sum(1, keepdim=True)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % args.eval_every == 0 or step == args.steps:
            res = zeroshot.evaluate(model, tokenizer, CLASSES, CLASS_TEMPLATES, val_batches, DOMAINS, progress=False,
                                    extra={"colour": (zeroshot.classifier(model, tokenizer, COLOUR_NAMES,
                                                                          embedded.COLOUR_TEMPLATES), lambda b: b[3])})
            rec = {"step": step, "minutes": round((time.time() - t_start) / 60, 2), "loss": round(loss.item(), 4),
                   "val_accuracy": round(res["micro"], 4), "colour_accuracy": round(res["colour_accuracy"], 4),
                   "per_domain": {k: round(v, 4) for k, v in res["per_domain"].items()}}
            history.append(rec)
            tqdm.write(json.dumps(rec))
            args.out.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().half().cpu().contiguous() for k, v in model.state_dict().items()},
                      str(args.out / f"{name}.safetensors"))
            settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
            (args.out / f"{name}.train.json").write_text(json.dumps(
                {"settings": settings, "torch": torch.__version__, "history": history}, indent=1))


if __name__ == "__main__":
    main()
