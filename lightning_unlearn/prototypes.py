"""Visual prototypes synthesised from the model itself (no data): model inversion towards a text.

Images start from noise and follow Adam on the pixels to maximise ``cos(f(x), t)`` for their
text embedding ``t``, with random jitter, an occasional blur, pixel clamping and an L2
penalty, stopping early once every image is classified as its own text with high confidence
(optionally each image on its own). An image's starting noise is drawn from ``(seed, key)`` and the
jitter from ``seed``: with the per-image stop an image depends only on its own text, key and seed.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .encoders import encode_image, image_io


@dataclass
class Prototypes:
    images: torch.Tensor  # k x n x 3 x H x W, pixels in [0, 1]
    cos: torch.Tensor  # k x n: final cosine with its text
    steps: torch.Tensor  # k x n: steps each image ran before it stopped
    seconds: float


model_io = image_io  # (image size, mean, std) of the model's image preprocessing


def _blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    k = (k[:, None] * k[None, :] / 16).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])


def _noise(key: str, seed: int, n: int, size: int) -> torch.Tensor:
    """The starting images of one text: a function of (seed, key) only."""
    s = int.from_bytes(hashlib.blake2b(f"{seed}|{key}".encode(), digest_size=8).digest(), "little") >> 1
    g = torch.Generator().manual_seed(s)
    return (0.5 + 0.1 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)


def synthesize(model, texts: torch.Tensor, n_per_text: int = 4, steps: int = 60, lr: float = 0.05,
               seed: int = 0, l2: float = 1e-3, blur_every: int = 10, stop_prob: float = 0.9, check_every: int = 10,
               classes: torch.Tensor | None = None, keys=None, per_image: bool = False,
               progress: bool = True) -> Prototypes:
    """Synthesise ``n_per_text`` images for every row of ``texts`` (k x d, normalised text
    embeddings), in one batch. ``classes`` (m x d, default ``texts``) is the label space of the
    early stop: the batch stops once every image's own class (its text's nearest class) has probability >
    ``stop_prob`` under ``softmax(100 cos)`` (checked every ``check_every`` steps), or after
    ``steps``; with ``per_image`` each image leaves the batch at its own first such check (fewer
    steps, but weaker prototypes: measured on whole-domain requests, off by default). ``keys`` (k strings, default the row numbers) name the texts for the starting noise. Deterministic for a ``seed``."""
    if n_per_text < 1 or steps < 1:
        raise ValueError(f"`n_per_text`={n_per_text} and `steps`={steps} must be >= 1")
    k = texts.shape[0]
    keys = [str(i) for i in range(k)] if keys is None else list(keys)
    if len(keys) != k:
        raise ValueError(f"{len(keys)} `keys` for {k} texts; give one key per row of `texts`")
    t0 = time.perf_counter()
    size, mean, std = model_io(model)
    p = next(model.parameters())
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([_noise(key, seed, n_per_text, size) for key in keys]).to(p.device)
    t = F.normalize(texts.float(), dim=-1).to(p.device).repeat_interleave(n_per_text, 0)
    C = F.normalize((texts if classes is None else classes).float(), dim=-1).to(p.device)
    own = torch.arange(k, device=p.device).repeat_interleave(n_per_text) if classes is None else \
        (t @ C.T).argmax(-1)
    mean, std = mean.to(p.device), std.to(p.device)
    m1, m2 = torch.zeros_like(x), torch.zeros_like(x)  # Adam moments (betas 0.9, 0.999), per image
    ran = torch.full((x.shape[0],), steps, dtype=torch.long)
    active = torch.arange(x.shape[0], device=p.device)
    shift = max(1, size // 16)
    was_training = model.training
    model.eval()
    requires = [q.requires_grad for q in model.parameters()]
    for q in model.parameters():
        q.requires_grad_(False)
    try:
        for step in tqdm(range(1, steps + 1), desc="prototypes", disable=not progress, leave=False):
            dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=g))
            xa = x[active].requires_grad_(True)
            h = F.normalize(encode_image(model, ((torch.roll(xa, (dx, dy), (2, 3)) - mean) / std).to(p.dtype)).float(),
                            dim=-1)
            loss = -(h * t[active]).sum() + l2 * ((xa - 0.5) ** 2).sum()
            grad, = torch.autograd.grad(loss, xa)
            with torch.no_grad():
                m1[active] = 0.9 * m1[active] + 0.1 * grad
                m2[active] = 0.999 * m2[active] + 0.001 * grad * grad
                xa = xa.detach() - lr * (m1[active] / (1 - 0.9 ** step)) / \
                    ((m2[active] / (1 - 0.999 ** step)).sqrt() + 1e-8)
                if blur_every and step % blur_every == 0:
                    xa = _blur(xa)
                x[active] = xa.clamp(0, 1)
                if stop_prob < 1 and step % check_every == 0:  # read on this step's (jittered) forward
                    done = (100 * h @ C.T).softmax(-1).gather(1, own[active, None]).squeeze(1) > stop_prob
                    if per_image or bool(done.all()):
                        ran[active[done].cpu()] = step
                        active = active[~done]
                    if not len(active):
                        break
        with torch.no_grad():
            h = F.normalize(encode_image(model, ((x - mean) / std).to(p.dtype)).float(), dim=-1)
            cos = (h * t).sum(-1)
    finally:
        for q, r in zip(model.parameters(), requires):
            q.requires_grad_(r)
        model.train(was_training)
    images = x.view(k, n_per_text, 3, size, size)
    return Prototypes(images, cos.view(k, n_per_text).cpu(), ran.view(k, n_per_text),
                      time.perf_counter() - t0)


def normalise_images(model, images: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] (any leading shape) -> the model's normalised input batch."""
    size, mean, std = model_io(model)
    p = next(model.parameters())
    x = images.reshape(-1, 3, size, size).to(p.device)
    return ((x - mean.to(p.device)) / std.to(p.device)).to(p.dtype)
