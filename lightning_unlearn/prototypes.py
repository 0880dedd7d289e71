"""Visual prototypes synthesised from the model itself (no data): model inversion towards a text.

Images start from noise and follow Adam on the pixels to maximise ``cos(f(x), t)`` for their
text embedding ``t``, with random jitter, an occasional blur, pixel clamping and an L2
penalty, stopping early once every image is classified as its own text with high confidence.
"""
from __future__ import annotations

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
    steps: int  # steps run before the early stop
    seconds: float


model_io = image_io  # (image size, mean, std) of the model's image preprocessing


def _blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    k = (k[:, None] * k[None, :] / 16).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])


def synthesize(model, texts: torch.Tensor, n_per_text: int = 4, steps: int = 150, lr: float = 0.05,
               seed: int = 0, l2: float = 1e-3, blur_every: int = 10, stop_prob: float = 0.9,
               classes: torch.Tensor | None = None, progress: bool = True) -> Prototypes:
    """Synthesise ``n_per_text`` images for every row of ``texts`` (k x d, normalised text
    embeddings), batched over all texts. ``classes`` (m x d, default ``texts``) is the label
    space of the early stop: it stops once every image gives its own text probability >
    ``stop_prob`` under ``softmax(100 cos)``. Deterministic for a ``seed``."""
    if n_per_text < 1 or steps < 1:
        raise ValueError(f"`n_per_text`={n_per_text} and `steps`={steps} must be >= 1")
    t0 = time.perf_counter()
    size, mean, std = model_io(model)
    p = next(model.parameters())
    k = texts.shape[0]
    g = torch.Generator().manual_seed(seed)
    x = (0.5 + 0.1 * torch.randn(k * n_per_text, 3, size, size, generator=g)).clamp(0, 1)
    x = x.to(p.device).requires_grad_(True)
    t = F.normalize(texts.float(), dim=-1).to(p.device).repeat_interleave(n_per_text, 0)
    C = F.normalize((texts if classes is None else classes).float(), dim=-1).to(p.device)
    own = torch.arange(k, device=p.device).repeat_interleave(n_per_text) if classes is None else \
        (t @ C.T).argmax(-1)
    mean, std = mean.to(p.device), std.to(p.device)
    opt = torch.optim.Adam([x], lr=lr)
    shift = max(1, size // 16)
    was_training = model.training
    model.eval()
    requires = [q.requires_grad for q in model.parameters()]
    for q in model.parameters():
        q.requires_grad_(False)
    step = 0
    try:
        for step in tqdm(range(1, steps + 1), desc="prototypes", disable=not progress, leave=False):
            dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=g))
            h = F.normalize(encode_image(model, ((torch.roll(x, (dx, dy), (2, 3)) - mean) / std).to(p.dtype)).float(),
                            dim=-1)
            cos = (h * t).sum(-1)
            loss = -cos.sum() + l2 * ((x - 0.5) ** 2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                if blur_every and step % blur_every == 0:
                    x.copy_(_blur(x))
                x.clamp_(0, 1)
                if stop_prob < 1 and step % 10 == 0:
                    prob = (100 * h @ C.T).softmax(-1).gather(1, own[:, None]).squeeze(1)
                    if bool((prob > stop_prob).all()):
                        break
        with torch.no_grad():
            h = F.normalize(encode_image(model, ((x - mean) / std).to(p.dtype)).float(), dim=-1)
            cos = (h * t).sum(-1)
    finally:
        for q, r in zip(model.parameters(), requires):
            q.requires_grad_(r)
        model.train(was_training)
    images = x.detach().view(k, n_per_text, 3, size, size)
    return Prototypes(images, cos.detach().view(k, n_per_text).cpu(), step, time.perf_counter() - t0)


def normalise_images(model, images: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] (any leading shape) -> the model's normalised input batch."""
    size, mean, std = model_io(model)
    p = next(model.parameters())
    x = images.reshape(-1, 3, size, size).to(p.device)
    return ((x - mean.to(p.device)) / std.to(p.device)).to(p.dtype)
