"""A procedural multi-domain image world, styled like PACS.

Every image shows one object *class* (a shape) of one *colour*, rendered in one *domain*
(photo, sketch, cartoon, painting). Images are deterministic functions of
``(seed, index)``: the same call always returns the same pixels, and train and test use
disjoint seeds. Colour is kept as a label: recognising it is the "unrelated task" that
unlearning must leave intact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle", "star", "cross", "heart", "arrow", "moon", "diamond", "hexagon")
DOMAINS = ("photo", "sketch", "cartoon", "painting")
#: One fixed request per paradigm (``ForgetRequest`` keyword arguments): the demo's requests and the
#: benchmarks' ``--quick`` set.
QUICK_REQUESTS = (
    ("global", {"forget_classes": ["star"]}),  # "star" in every domain
    ("domain-specific", {"forget_classes": ["star"], "forget_domains": ["sketch"]}),  # only sketched stars
    ("domain", {"forget_domains": ["painting"]}),  # every class in the painting domain
)
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 70, 225),
    "yellow": (240, 215, 25),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
}
COLOUR_NAMES = tuple(COLOURS)
SUPERSAMPLE = 4  # render at 4x the output size, then downsample (anti-aliasing)


def _regular(n: int, phase: float = 0.0, r: float = 1.0) -> np.ndarray:
    a = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([r * np.sin(a), -r * np.cos(a)], 1)


def _outline(name: str) -> np.ndarray:
    """The class's polygon in unit coordinates (roughly inside [-1, 1]^2)."""
    if name == "circle":
        return _regular(48)
    if name == "square":
        return np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])
    if name == "triangle":
        return _regular(3, r=1.0) + [0, 0.2]
    if name == "star":
        pts = np.empty((10, 2))
        pts[0::2], pts[1::2] = _regular(5), _regular(5, math.pi / 5, 0.42)
        return pts
    if name == "cross":
        a, b = 0.3, 0.9
        return np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b],
                         [-a, a], [-b, a], [-b, -a], [-a, -a]])
    if name == "heart":
        t = np.linspace(0, 2 * math.pi, 60, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return np.stack([x, -y - 2], 1) / 16.0
    if name == "arrow":
        return np.array([[-0.9, -0.25], [0.1, -0.25], [0.1, -0.65], [0.9, 0.0], [0.1, 0.65], [0.1, 0.25],
                         [-0.9, 0.25]])
    if name == "moon":
        t = np.linspace(-0.5 * math.pi, 0.5 * math.pi, 30)
        outer = np.stack([np.cos(t), np.sin(t)], 1)
        inner = np.stack([0.45 * np.cos(t[::-1]), np.sin(t[::-1])], 1)
        return (np.concatenate([outer, inner]) - [0.3, 0]) * 1.0
    if name == "diamond":
        return np.array([[0.0, -1.0], [0.6, 0.0], [0.0, 1.0], [-0.6, 0.0]])
    if name == "hexagon":
        return _regular(6, math.pi / 6)
    raise ValueError(f"unknown class {name!r}; expected one of {CLASSES}")


_OUTLINES = {c: _outline(c) for c in CLASSES}


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    cls: int
    domain: int
    colour: int


def _place(rng: np.random.Generator, name: str, size: int) -> list[tuple[float, float]]:
    pts = _OUTLINES[name]
    angle = math.radians(rng.uniform(-18, 18))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    scale = rng.uniform(0.28, 0.40) * size
    centre = size / 2 + rng.uniform(-0.1, 0.1, 2) * size
    return [tuple(p) for p in (pts @ rot.T) * scale + centre]


def _mask(poly, size: int, outline_width: int = 0) -> np.ndarray:
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    if outline_width:
        draw.line(poly + [poly[0]], fill=255, width=outline_width, joint="curve")
    else:
        draw.polygon(poly, fill=255)
    return np.asarray(img, np.float32) / 255.0


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bicubically."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), np.float32) / 255.0


def _streaks(rng: np.random.Generator, size: int, n: int, width: int) -> np.ndarray:
    """Brush strokes: many short thick lines of random brightness in one main direction."""
    img = Image.new("L", (size, size), 128)
    draw = ImageDraw.Draw(img)
    base = rng.uniform(0, math.pi)
    for _ in range(n):
        x, y = rng.uniform(0, size, 2)
        a = base + rng.normal(0, 0.3)
        length = rng.uniform(0.1, 0.3) * size
        draw.line([(x, y), (x + length * math.cos(a), y + length * math.sin(a))],
                  fill=int(rng.uniform(40, 215)), width=width)
    return np.asarray(img.filter(ImageFilter.GaussianBlur(width / 3)), np.float32) / 255.0


def _compose(bg: np.ndarray, fg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return bg * (1 - alpha[..., None]) + fg * alpha[..., None]


def _photo(rng, poly, size, rgb):
    tone = rng.uniform(0.35, 0.75)
    tint = rng.uniform(-0.06, 0.06, 3)
    grad = np.linspace(-0.12, 0.12, size)[None, :, None] * rng.choice([-1, 1])
    bg = tone + tint + grad + (_smooth_noise(rng, size, 6)[..., None] - 0.5) * 0.25
    shift = int(0.04 * size)
    shadow = np.roll(np.asarray(Image.fromarray((_mask(poly, size) * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(size / 40)), np.float32) / 255.0, (shift, shift), (0, 1))
    bg = bg * (1 - 0.45 * shadow[..., None])
    a = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    light = 1.0 + 0.45 * (xx * math.cos(a) + yy * math.sin(a))
    fg = rgb * light[..., None] + (rng.random((size, size, 1)) - 0.5) * 0.06
    return _compose(bg, fg, _mask(poly, size))


def _sketch(rng, poly, size, rgb):
    paper = 0.92 + (_smooth_noise(rng, size, 12)[..., None] - 0.5) * 0.08 + np.zeros(3, np.float32)
    ink = rgb * 0.8
    alpha = np.zeros((size, size), np.float32)
    width = max(1, size // 40)
    for _ in range(2):  # two slightly offset strokes, as a hand would draw
        jitter = [(x + rng.normal(0, size / 120), y + rng.normal(0, size / 120)) for x, y in poly]
        alpha = np.maximum(alpha, _mask(jitter, size, outline_width=width) * rng.uniform(0.7, 1.0))
    return _compose(paper, np.broadcast_to(ink, paper.shape), alpha)


def _cartoon(rng, poly, size, rgb):
    bg = np.clip(rng.uniform(0.8, 1.0, 3) * np.array([1.0, 1.0, 1.0]), 0, 1)
    bg = np.broadcast_to(bg * 0.9 + 0.1, (size, size, 3))
    fill = np.clip(rgb * 1.15, 0, 1)
    img = _compose(bg, np.broadcast_to(fill, bg.shape), _mask(poly, size))
    return _compose(img, np.zeros_like(img), _mask(poly, size, outline_width=max(2, size // 12)))


def _painting(rng, poly, size, rgb):
    canvas = rng.uniform(0.45, 0.85, 3) * 0.6 + 0.2
    bg = canvas + (_streaks(rng, size, 90, size // 10)[..., None] - 0.5) * 0.35 \
        + (_smooth_noise(rng, size, 4)[..., None] - 0.5) * rng.uniform(-0.3, 0.3, 3)
    fg = rgb + (_streaks(rng, size, 60, size // 14)[..., None] - 0.5) * 0.45
    soft = np.asarray(Image.fromarray((_mask(poly, size) * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(size / 50)), np.float32) / 255.0
    return _compose(bg, fg, soft)


_STYLES = {"photo": _photo, "sketch": _sketch, "cartoon": _cartoon, "painting": _painting}


def render(cls: int, domain: int, colour: int, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """Render one image of class ``cls`` in ``domain`` and ``colour`` (indices into the tuples above)."""
    big = size * SUPERSAMPLE
    poly = _place(rng, CLASSES[cls], big)
    rgb = np.array(COLOURS[COLOUR_NAMES[colour]], np.float32) / 255.0
    arr = _STYLES[DOMAINS[domain]](rng, poly, big, rgb)
    img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8), "RGB")
    return img.resize((size, size), Image.BOX)


SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


class World:
    """An indexable, deterministic set of images: ``n_per_cell`` for every (class, domain) cell.

    Index ``i`` maps to cell ``i // n_per_cell`` (class-major); its colour and pose are drawn
    from ``np.random.default_rng([seed, split, i])``, so any image can be rendered alone.
    """

    def __init__(self, split: str = "test", n_per_cell: int = 100, size: int = 32, seed: int = 0,
                 classes: Sequence[str] = CLASSES, domains: Sequence[str] = DOMAINS):
        if split not in SPLIT_SEEDS:
            raise ValueError(f"`split`={split!r} is not one of {sorted(SPLIT_SEEDS)}")
        if n_per_cell < 1:
            raise ValueError(f"`n_per_cell`={n_per_cell} must be >= 1")
        unknown = [c for c in classes if c not in CLASSES] + [d for d in domains if d not in DOMAINS]
        if unknown:
            raise ValueError(f"unknown names {unknown}; the world has classes {CLASSES} and domains {DOMAINS}")
        self.split, self.n_per_cell, self.size, self.seed = split, n_per_cell, size, seed
        self.classnames, self.domains = tuple(classes), tuple(domains)
        self._cls = [CLASSES.index(c) for c in classes]
        self._dom = [DOMAINS.index(d) for d in domains]

    def __len__(self) -> int:
        return len(self._cls) * len(self._dom) * self.n_per_cell

    def labels(self, i: int) -> tuple[int, int, int]:
        """(class, domain, colour) of image ``i``, indices into ``classnames``, ``domains``, COLOUR_NAMES."""
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a world of {len(self)} images")
        cell = i // self.n_per_cell
        c, d = divmod(cell, len(self._dom))
        colour = int(np.random.default_rng([self.seed, SPLIT_SEEDS[self.split], i, 7]).integers(len(COLOURS)))
        return c, d, colour

    def __getitem__(self, i: int) -> Sample:
        c, d, colour = self.labels(i)
        rng = np.random.default_rng([self.seed, SPLIT_SEEDS[self.split], i])
        return Sample(render(self._cls[c], self._dom[d], colour, rng, self.size), c, d, colour)
