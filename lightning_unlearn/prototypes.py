"""Visual prototypes synthesised from the model itself (no data): model inversion towards a text.

Images start from noise and follow Adam on the pixels to maximise ``cos(f(x), t)`` for their
text embedding ``t``, with random jitter, an occasional blur, pixel clamping and an L2
penalty, stopping early once every image is classified as its own text with high confidence
(optionally each image on its own). An image's starting noise is drawn from ``(seed, key)`` and the
jitter from ``seed``: with the per-image stop an image depends only on its own text, key and seed,
and with the group stop on its group's texts and keys (several groups may share a batch).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from dataclasses import dataclass
from contextvars import ContextVar
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .encoders import encode_image, image_io


@dataclass
class Prototypes:
    images: torch.Tensor  # k x n x 3 x H x W, pixels in [0, 1] (a share: m x 3 x H x W, see synthesize)
    cos: torch.Tensor  # k x n: final cosine with its text (a share: m)
    steps: torch.Tensor  # k x n: steps each image ran before it stopped (a share: m)
    seconds: float


model_io = image_io  # (image size, mean, std) of the model's image preprocessing


#: Most images per synthesis batch on CUDA when :class:`Options` sets no cap.
CUDA_MAX_IMAGES = 4096


@dataclass(frozen=True)
class Options:
    """How prototypes are computed on the hardware, set with :func:`options` around an edit.

    ``max_images``: cap on the images of one synthesis batch on CUDA (default :data:`CUDA_MAX_IMAGES`);
    ``memory_fraction``: the share of the GPU's free memory (``torch.cuda.mem_get_info``) a batch may
    fill. On CUDA a batch holds as many of the keyed stop groups of
    :func:`directions.prototype_columns` as fit; each group stops on its own, so the prototypes depend
    on the batch size only through the kernels' rounding (measured on CPU: bit-identical from 16 images
    per batch on, pixels up to 1e-3 apart after 40 steps at 4 images, the same stops; tests/test_scale.py).
    On other devices a batch is one group, as the batch sizes there were chosen. ``autocast``: bfloat16 autocast in :func:`synthesize` (opt-in: the quality targets have
    not been measured with it; the prototypes and so the edit change, the maps stay float32; bank
    entries are kept apart)."""
    max_images: int | None = None
    memory_fraction: float = 0.5
    autocast: bool = False

    def __post_init__(self):
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"`max_images`={self.max_images} must be >= 1 (or None: {CUDA_MAX_IMAGES})")
        if not 0 < self.memory_fraction <= 1:
            raise ValueError(f"`memory_fraction`={self.memory_fraction} must be in (0, 1]")


_OPTIONS: ContextVar[Options] = ContextVar("lightning_unlearn_prototype_options", default=Options())


def current_options() -> Options:
    return _OPTIONS.get()


@contextlib.contextmanager
def options(**fields):
    """Prototype :class:`Options` inside the block, e.g.
    ``with prototypes.options(max_images=1024, autocast=True): unlearn_(...)``."""
    token = _OPTIONS.set(dataclasses.replace(_OPTIONS.get(), **fields))
    try:
        yield _OPTIONS.get()
    finally:
        _OPTIONS.reset(token)


_PER_IMAGE: dict = {}  # (model id, device, dtype, size, autocast) -> bytes per image of a synthesis step


def _bytes_per_image(model, autocast: bool, probe: int = 8) -> float:
    """CUDA memory one image takes in a synthesis step (forward, backward, pixels and Adam moments),
    measured once per model on ``probe`` images (resets the device's peak-memory statistics)."""
    size, mean, std = model_io(model)
    p = next(model.parameters())
    key = (id(model), str(p.device), p.dtype, size, autocast)
    if key not in _PER_IMAGE:
        torch.cuda.synchronize(p.device)
        torch.cuda.reset_peak_memory_stats(p.device)
        base = torch.cuda.memory_allocated(p.device)
        x = torch.rand(probe, 3, size, size, device=p.device, requires_grad=True)
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with amp:
            out = encode_image(model, ((x - mean.to(p.device)) / std.to(p.device)).to(p.dtype))
        torch.autograd.grad(out.float().sum(), x)
        torch.cuda.synchronize(p.device)
        step = (torch.cuda.max_memory_allocated(p.device) - base) / probe
        _PER_IMAGE[key] = 1.25 * step + 4 * 4 * 3 * size * size  # margin; + pixels, 2 moments, gradient
        del x, out
    return _PER_IMAGE[key]


def batch_images(model, group_images: int, opts: Options | None = None) -> int:
    """Images per synthesis batch, a multiple of ``group_images`` (one stop group): on CUDA as many
    as ``opts.memory_fraction`` of the free memory holds (the driver's free memory and what torch's
    allocator holds unused, over the bytes per image of :func:`_bytes_per_image`), at most
    ``opts.max_images`` (at least one group); elsewhere one group."""
    opts = current_options() if opts is None else opts
    p = next(model.parameters())
    if p.device.type != "cuda":
        return group_images
    per = _bytes_per_image(model, opts.autocast)
    free = torch.cuda.mem_get_info(p.device)[0] + torch.cuda.memory_reserved(p.device) - \
        torch.cuda.memory_allocated(p.device)  # the driver's free memory and what torch holds unused
    fit = int(free * opts.memory_fraction // per)
    cap = CUDA_MAX_IMAGES if opts.max_images is None else opts.max_images
    return max(group_images, min(fit, cap) // group_images * group_images)


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
               progress: bool = True, groups=None, share: tuple[int, int] | None = None,
               agree: Callable[[torch.Tensor], torch.Tensor] | None = None, autocast: bool = False,
               init: torch.Tensor | None = None) -> Prototypes:
    """Synthesise ``n_per_text`` images for every row of ``texts`` (k x d, normalised text
    embeddings), in one batch. ``classes`` (m x d, default ``texts``) is the label space of the
    early stop: the batch stops once every image's own class (its text's nearest class) has probability >
    ``stop_prob`` under ``softmax(100 cos)`` (checked every ``check_every`` steps), or after
    ``steps``; with ``per_image`` each image leaves the batch at its own first such check (fewer
    steps, but weaker prototypes: measured on whole-domain requests, off by default). ``keys`` (k strings, default the row numbers) name the texts for the starting noise. Deterministic for a ``seed``.

    ``groups`` (k labels, default one group): texts that stop together; each group stops on its own,
    as if synthesised in a call of its own (the jitter and Adam's step count are the same in every
    group), so one call may carry several groups (a batch sized by the device) without changing them.
    ``share`` = (rank, world): synthesise only images ``rank::world`` of the ``k * n_per_text``
    (text-major); the tensors of the result are then flat over those images. ``agree`` turns this
    share's per-group "every image done" flags (a bool tensor, one per group) into every share's (a
    collective: see :mod:`~lightning_unlearn.sharding`). ``autocast``: the forward and backward in
    bfloat16 autocast on the model's device (opt-in, quality not measured); pixels, Adam moments and
    the final cosines stay float32. ``init`` (k x n_per_text x 3 x H x W, pixels in [0, 1]): the starting
    images instead of the noise of (seed, key) (a warm start, see :func:`directions.prototype_columns`)."""
    if n_per_text < 1 or steps < 1:
        raise ValueError(f"`n_per_text`={n_per_text} and `steps`={steps} must be >= 1")
    k = texts.shape[0]
    keys = [str(i) for i in range(k)] if keys is None else list(keys)
    if len(keys) != k:
        raise ValueError(f"{len(keys)} `keys` for {k} texts; give one key per row of `texts`")
    if groups is not None and len(list(groups)) != k:
        raise ValueError(f"{len(list(groups))} `groups` for {k} texts; give one group label per row of `texts`")
    if groups is not None and classes is None:
        raise ValueError("`groups` need `classes`: without them the label space of the early stop is every text "
                         "of the call, and a group would stop differently beside other groups")
    t0 = time.perf_counter()
    size, mean, std = model_io(model)
    p = next(model.parameters())
    g = torch.Generator().manual_seed(seed)
    sel = torch.arange(k * n_per_text) if share is None else torch.arange(share[0], k * n_per_text, share[1])
    if init is not None and tuple(init.shape) != (k, n_per_text, 3, size, size):
        raise ValueError(f"`init` has shape {tuple(init.shape)}; give the starting images as (texts, n_per_text, 3, "
                         f"size, size) = {(k, n_per_text, 3, size, size)}")
    start = torch.cat([_noise(key, seed, n_per_text, size) for key in keys]) if init is None else \
        init.detach().float().cpu().flatten(0, 1).clamp(0, 1)
    x = start[sel].to(p.device)
    t_all = F.normalize(texts.float(), dim=-1).to(p.device).repeat_interleave(n_per_text, 0)
    t = t_all[sel.to(p.device)]
    C = F.normalize((texts if classes is None else classes).float(), dim=-1).to(p.device)
    own = torch.arange(k, device=p.device).repeat_interleave(n_per_text)[sel.to(p.device)] if classes is None else \
        (t @ C.T).argmax(-1)
    labels = torch.zeros(k, dtype=torch.long) if groups is None else \
        torch.unique(torch.as_tensor(list(groups)), return_inverse=True)[1]
    group = labels.repeat_interleave(n_per_text)[sel]  # each image's group (CPU)
    n_groups = int(labels.max()) + 1 if k else 0
    stopped = torch.zeros(n_groups, dtype=torch.bool)
    mean, std = mean.to(p.device), std.to(p.device)
    m1, m2 = torch.zeros_like(x), torch.zeros_like(x)  # Adam moments (betas 0.9, 0.999), per image
    ran = torch.full((x.shape[0],), steps, dtype=torch.long)
    active = torch.arange(x.shape[0], device=p.device)
    shift = max(1, size // 16)
    amp = torch.autocast(p.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    requires = [q.requires_grad for q in model.parameters()]
    for q in model.parameters():
        q.requires_grad_(False)
    try:
        for step in tqdm(range(1, steps + 1), desc="prototypes", disable=not progress, leave=False):
            dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=g))
            if len(active):  # a share may hold no image (or none left) while the others still run
                xa = x[active].requires_grad_(True)
                with amp:
                    out = encode_image(model, ((torch.roll(xa, (dx, dy), (2, 3)) - mean) / std).to(p.dtype))
                h = F.normalize(out.float(), dim=-1)
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
                at = active.cpu()
                with torch.no_grad():
                    done = (100 * h.detach() @ C.T).softmax(-1).gather(1, own[active, None]).squeeze(1).cpu() \
                        > stop_prob if len(at) else torch.zeros(0, dtype=torch.bool)
                if per_image:
                    stop = done
                else:  # a group stops once every one of its images is done (in every share)
                    every = torch.ones(n_groups, dtype=torch.bool)
                    every[group[at][~done]] = False
                    if agree is not None:
                        every = agree(every).cpu().bool()
                    stopped |= every
                    stop = every[group[at]]
                ran[at[stop]] = step
                active = active[(~stop).to(active.device)]
            if not len(active) and (per_image or agree is None or bool(stopped.all())):
                break
        with torch.no_grad():
            cos = (F.normalize(encode_image(model, ((x - mean) / std).to(p.dtype)).float(), dim=-1) * t).sum(-1) \
                if len(x) else torch.zeros(0)
    finally:
        for q, r in zip(model.parameters(), requires):
            q.requires_grad_(r)
        model.train(was_training)
    if share is not None:
        return Prototypes(x, cos.cpu(), ran, time.perf_counter() - t0)
    images = x.view(k, n_per_text, 3, size, size)
    return Prototypes(images, cos.view(k, n_per_text).cpu(), ran.view(k, n_per_text),
                      time.perf_counter() - t0)


def normalise_images(model, images: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] (any leading shape) -> the model's normalised input batch."""
    size, mean, std = model_io(model)
    p = next(model.parameters())
    x = images.reshape(-1, 3, size, size).to(p.device)
    return ((x - mean.to(p.device)) / std.to(p.device)).to(p.dtype)
