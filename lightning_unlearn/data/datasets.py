"""Torch datasets: the rendered world, and any image set laid out as ``root/<domain>/<class>/<image>``.

The folder layout is the one PACS, DomainNet and Office-Home ship in, and the one
:func:`write_world` writes, so the world can round-trip through disk.
"""
from __future__ import annotations

import difflib
import re
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import open_clip
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms

from .world import CLASSES, COLOUR_NAMES, DOMAINS, World

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def default_transform() -> Callable:
    """ToTensor + CLIP normalisation. No resize: fine for the world's 32 px images; for photos of
    other sizes pass the model's own ``preprocess`` (from ``open_clip.create_model_and_transforms``)."""
    return transforms.Compose([transforms.ToTensor(),
                               transforms.Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)])


class WorldDataset(Dataset):
    """A :class:`World` as a torch dataset of ``(image, class_idx, domain_idx, colour_idx)``."""

    def __init__(self, world: World, transform: Callable | None = None):
        self.world = world
        self.transform = transform or default_transform()
        self.classnames, self.domains, self.colours = world.classnames, world.domains, COLOUR_NAMES

    def __len__(self) -> int:
        return len(self.world)

    def __getitem__(self, i: int):
        s = self.world[i]
        return self.transform(s.image), s.cls, s.domain, s.colour



def _rendered(split: str, n_per_cell: int, transform: Callable | None, progress: bool = False) -> list[tuple]:
    """Every ``(image, class, domain, colour)`` item of the world's ``split``, rendered and transformed."""
    from tqdm.auto import tqdm
    ds = WorldDataset(World(split, n_per_cell), transform)
    return [ds[i] for i in tqdm(range(len(ds)), desc=f"render {split} world", disable=not progress, leave=False)]


def _stacked(items: Sequence[tuple]) -> tuple[torch.Tensor, ...]:
    return torch.stack([x for x, *_ in items]), *(torch.tensor(col) for col in list(zip(*items))[1:])


def rendered_batches(split: str, n_per_cell: int, transform: Callable | None = None, batch_size: int = 500,
                     progress: bool = False) -> list[tuple[torch.Tensor, ...]]:
    """``(images, class, domain, colour)`` batches of the world's ``split``, rendered once."""
    items = _rendered(split, n_per_cell, transform, progress)
    return [_stacked(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


def render_split(split: str, n_per_cell: int, transform: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The world's ``split`` as two tensors.

    Args:
        split: "train", "val" or "test".
        n_per_cell: images per (class, domain) cell.
        transform: image -> tensor (default: :func:`default_transform`; a model's ``preprocess``).

    Returns:
        ``(images, labels)``: the transformed images stacked, and their ``(class, domain, colour)``
        indices, ``(N, 3)``.
    """
    items = _rendered(split, n_per_cell, transform)
    return torch.stack([x for x, *_ in items]), torch.tensor([tuple(labels) for _, *labels in items])


def embed_split(clip, split: str, n_per_cell: int, batch_size: int = 500) -> tuple[torch.Tensor, ...]:
    """The world's ``split`` rendered with ``clip.preprocess`` and encoded by ``clip.model``.

    Args:
        clip: a loaded model (``.model``, ``.preprocess``: :func:`~lightning_unlearn.load.load_clip`).
        split, n_per_cell: as :func:`render_split`.
        batch_size: images encoded at a time.

    Returns:
        ``(images, embeddings, labels)``: :func:`render_split`'s images and labels, and the images'
        unnormalised float32 embeddings (:func:`~lightning_unlearn.zeroshot.encode_images`).
    """
    from ..zeroshot import encode_images
    x, y = render_split(split, n_per_cell, clip.preprocess)
    return x, encode_images(clip.model, x, batch_size), y


def cell_images(images: torch.Tensor, labels: torch.Tensor, cells: Sequence[tuple[str, str]], k: int | None = None,
                classnames: Sequence[str] = CLASSES, domains: Sequence[str] = DOMAINS) -> dict:
    """The first ``k`` (default: all) of ``images`` of each of ``cells`` (``{(class, domain): images}``,
    the form ``evidence=`` takes; any rows, e.g. embeddings), from their :func:`render_split` ``labels``."""
    ci, di = labels[:, 0], labels[:, 1]
    return {(c, d): images[(ci == classnames.index(c)) & (di == domains.index(d))][:k] for c, d in cells}


def recorded(fn: Callable, *args, **kwargs) -> tuple:
    """``fn(*args, **kwargs)`` and the warnings it raised, as text, for callers that report them in
    their own words."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, [str(w.message) for w in caught]


def scan_folder(root: str | Path, domains=None, classnames=None) -> tuple["DomainFolderDataset", list[str]]:
    """:class:`DomainFolderDataset` of ``root`` and the warnings its scan raised (skipped files,
    missing cells), as text."""
    return recorded(DomainFolderDataset, root, domains=domains, classnames=classnames)


def _spelled(folders: Sequence[str], names: Sequence[str], parent: Path, what: str) -> dict[str, str | None]:
    """Each folder name as spelled in ``names``, matched as a request matches names (case-insensitively),
    or None; two folders that name one entry of ``names`` are refused."""
    from ..request import _key
    spelled, seen = {_key(n): n for n in names}, {}
    for f in folders:
        if (other := seen.setdefault(_key(f), f)) != f:
            raise ValueError(f"evidence folders {parent / other} and {parent / f} differ only in case and name one "
                             f"{what}; merge them into one folder")
    return {f: spelled.get(_key(f)) for f in folders}


def evidence_from_folder(root: str | Path, request, transform: Callable) -> dict[tuple[str, str], torch.Tensor]:
    """Real images of cells of ``request``'s label space, ``root/<domain>/<class>/<image>``, as the
    ``evidence`` of a deep edit: ``{(class, domain): transform(images) stacked (N, 3, H, W)}``.
    Forgotten and retained cells are both welcome (depth needs both); a folder whose class or domain
    is not in the label space is refused. Folder names match the request's names case-insensitively
    (as ``forget_classes`` do; two folders differing only in case are refused); unreadable images
    and class folders with no readable image are skipped with one ``UserWarning`` (how many, and
    the first paths)."""
    ds, _ = scan_folder(root)  # a cell with no folder is expected here: evidence may cover any cells
    root = Path(root)
    domains = _spelled(ds.domains, request.domains, root, "domain")
    classes = {d: _spelled(_subdirs(root / d), request.classnames, root / d, "class") for d in ds.domains}
    cells = [(c, d) for d in ds.domains for c in classes[d] if ds.support[d][c]]
    if other := [(c, d) for c, d in cells if classes[d][c] is None or domains[d] is None]:
        raise ValueError(f"evidence folder {root} has images of cells outside this request's label space: "
                         f"{', '.join(f'{d}/{c}' for c, d in other[:5])}; expected <domain>/<class> folders with a "
                         f"domain of {list(request.domains)} and a class of {list(request.classnames)}")
    empty = [root / d / c for d in ds.domains for c in classes[d] if not ds.support[d][c]]
    skipped = [f"{len(paths)} {what} (first: {', '.join(map(str, paths[:3]))})" for what, paths in
               (("unreadable image file(s)", ds.skipped), ("class folder(s) with no readable image", empty)) if paths]
    if skipped:
        warnings.warn(f"evidence folder {root}: skipped {'; '.join(skipped)}; replace or remove them", UserWarning,
                      stacklevel=2)
    ds.transform, out = transform, {}
    for i, (_, c, d) in enumerate(ds.samples):
        d = ds.domains[d]
        out.setdefault((classes[d][ds.classnames[c]], domains[d]), []).append(ds[i][0])
    return {cell: torch.stack(xs) for cell, xs in out.items()}


def write_world(world: World, root: str | Path) -> Path:
    """Save every image of ``world`` as ``root/<domain>/<class>/<n>.png`` (``n``: index within the
    cell); returns ``root``. Read it back with :class:`DomainFolderDataset`."""
    root = Path(root)
    for i in range(len(world)):
        s = world[i]
        folder = root / world.domains[s.domain] / world.classnames[s.cls]
        folder.mkdir(parents=True, exist_ok=True)
        s.image.save(folder / f"{i % world.n_per_cell}.png")
    return root


def _natural(name: str):
    """Sort key that puts ``2.png`` before ``10.png``."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def _subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _choose(given: Sequence[str] | None, found: Sequence[str], what: str, arg: str, root: Path) -> tuple[str, ...]:
    """``given`` (validated against ``found``) or ``found``."""
    if given is None:
        return tuple(found)
    if isinstance(given, str):
        raise TypeError(f"`{arg}` must be a sequence of names, got the single string {given!r}; wrap it in a list")
    given = tuple(given)
    dupes = sorted({n for n in given if given.count(n) > 1})
    if dupes:
        raise ValueError(f"`{arg}` lists {dupes} more than once; give each {what} once")
    for n in given:
        if n not in found:
            close = difflib.get_close_matches(n, found, n=3)
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            raise ValueError(f"{what} {n!r} in `{arg}` has no folder under {root}; {hint}found: {list(found)}")
    return given


class DomainFolderDataset(Dataset):
    """Images in ``root/<domain>/<class>/<image>`` as a torch dataset of ``(image, class_idx, domain_idx)``.

    Domains and classes are the folder names in sorted order (as in torchvision ``ImageFolder``),
    unless ``domains`` / ``classnames`` fix the order (or pick a subset: unlisted folders are left
    out). Classes are the union over domains; ``support[domain][class]`` counts the images of each
    cell and a warning names any domain that lacks a class. Files with other extensions and hidden
    files are ignored; image files that PIL cannot decode (damaged, truncated) are skipped with one
    warning and listed in ``skipped`` (``verify=False`` skips that check, which decodes every image
    once, for speed on large sets; a bad file then raises an ``OSError`` naming it when it is read).

    Images become 8-bit RGB by :func:`to_rgb`: 16-bit images are scaled (not clipped to white) and
    transparent ones (RGBA, LA, palette with transparency) are composited on a white background.
    """

    def __init__(self, root: str | Path, transform: Callable | None = None, domains: Sequence[str] | None = None,
                 classnames: Sequence[str] | None = None, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                 verify: bool = True):
        self.root = root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"dataset root {root} does not exist; expected a folder laid out as "
                                    "<root>/<domain>/<class>/<image> (e.g. an unpacked PACS)")
        if not root.is_dir():
            raise NotADirectoryError(f"dataset root {root} is a file; expected a folder of <domain>/<class>/<image>")
        self.transform = transform or default_transform()
        exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
        self.domains = _choose(domains, _subdirs(root), "domain", "domains", root)
        if not self.domains:
            raise ValueError(f"{root} has no domain folders; expected <root>/<domain>/<class>/<image>")
        by_domain = {}
        for d in self.domains:
            names = _subdirs(root / d)
            if not names:
                raise ValueError(f"domain folder {root / d} has no class folders; expected "
                                 f"{root / d}/<class>/<image> (or drop {d!r} via `domains=`)")
            by_domain[d] = names
        union = sorted(set().union(*by_domain.values()))
        self.classnames = _choose(classnames, union, "class", "classnames", root)

        self.samples: list[tuple[Path, int, int]] = []
        self.skipped: list[Path] = []
        self.support = {d: {c: 0 for c in self.classnames} for d in self.domains}
        for di, d in enumerate(self.domains):
            for ci, c in enumerate(self.classnames):
                folder = root / d / c
                files = sorted(folder.iterdir(), key=lambda p: _natural(p.name)) if folder.is_dir() else []
                for p in files:
                    if p.name.startswith(".") or p.suffix.lower() not in exts or not p.is_file():
                        continue
                    if verify and not _readable(p):
                        self.skipped.append(p)
                        continue
                    self.samples.append((p, ci, di))
                    self.support[d][c] += 1
        if not self.samples:
            bad = f" ({len(self.skipped)} unreadable, e.g. {self.skipped[0]})" if self.skipped else ""
            raise ValueError(f"no readable images with extensions {sorted(exts)} under {root}{bad}; "
                             "expected <root>/<domain>/<class>/<image> (pass `extensions=` for other types)")
        missing = {d: [c for c, n in counts.items() if n == 0] for d, counts in self.support.items()}
        missing = {d: cs for d, cs in missing.items() if cs}
        if missing:
            warnings.warn(f"some domains lack some classes under {root}: "
                          + "; ".join(f"{d!r} lacks {cs}" for d, cs in missing.items())
                          + ". Using the union of classes; see `.support` for images per (domain, class)", stacklevel=2)
        if self.skipped:
            warnings.warn(f"skipped {len(self.skipped)} unreadable image file(s) under {root}, the first being "
                          f"{self.skipped[0]}; see `.skipped` for all of them", stacklevel=2)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, c, d = self.samples[i]
        try:
            with Image.open(path) as im:
                image = to_rgb(im)
        except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError ... for bad files
            raise OSError(f"cannot read image {path}: {type(e).__name__}: {e}; delete or replace the file (or build "
                          "the dataset with verify=True, the default, to skip unreadable files)") from e
        return self.transform(image), c, d


def to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB: 16/32-bit integer images are scaled from their bit depth (PIL's own
    ``convert`` clips them, turning a 16-bit image white), float images from [0, 1], and images
    with transparency are alpha-composited on white (the usual background of object datasets)."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 1.0 if im.mode == "F" else 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) <= 65535 else 2.0**32 - 1
        im = Image.fromarray((np.clip(a / top, 0, 1) * 255 + 0.5).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _readable(path: Path) -> bool:
    """Whether PIL decodes the whole file (``verify`` alone misses truncated JPEGs)."""
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 - PIL raises many types (OSError, SyntaxError, ValueError, ...) for bad files
        return False
