"""Lightning data modules: the embedded world, and image folders laid out as ``root/<domain>/<class>/``.

Both expose ``classnames`` and ``domains`` (label-index order) once set up, which
:class:`~lightning_unlearn.module.CLIPUnlearning` checks against its own. The transform defaults
to the LightningModule's ``preprocess`` (the model's own, when it has one), else
:func:`~lightning_unlearn.data.datasets.default_transform`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from .data.world import CLASSES, DOMAINS, SPLIT_SEEDS, World


def _check_loader_args(batch_size, num_workers) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size`={batch_size!r} must be an integer >= 1")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"`num_workers`={num_workers!r} must be an integer >= 0")


class _Loaders(LightningDataModule):
    batch_size: int
    num_workers: int
    transform: Optional[Callable]

    def _transform(self) -> Callable:
        if self.transform is not None:
            return self.transform
        module = self.trainer.lightning_module if self.trainer is not None else None
        preprocess = getattr(module, "preprocess", None)
        if preprocess is not None:
            return preprocess
        from .data.datasets import default_transform
        return default_transform()

    def _loader(self, dataset: Dataset, shuffle: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def dataset(self, which: str) -> Dataset:  # "train", "val" or "test"
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("train"), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"))

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"))


class WorldDataModule(_Loaders):
    """The procedural world (:class:`~lightning_unlearn.data.World`): ``n_per_cell`` images per
    (class, domain) cell; batches of ``(image, class, domain, colour)``.

    ``fit`` trains on ``train_split`` and validates on ``val_split``; ``validate`` uses
    ``val_split``; ``test`` and ``predict`` use ``test_split``.

    Raises:
        ValueError: ``n_per_cell`` or ``batch_size`` below 1, ``num_workers`` below 0, or an unknown split.
    """

    def __init__(self, n_per_cell: int = 20, batch_size: int = 200, num_workers: int = 0, size: int = 32,
                 seed: int = 0, classnames: Optional[list[str]] = None, domains: Optional[list[str]] = None,
                 train_split: str = "train", val_split: str = "val", test_split: str = "test",
                 transform: Optional[Callable] = None):
        super().__init__()
        if not isinstance(n_per_cell, int) or n_per_cell < 1:
            raise ValueError(f"`n_per_cell`={n_per_cell!r} must be an integer >= 1")
        _check_loader_args(batch_size, num_workers)
        for name, split in [("train_split", train_split), ("val_split", val_split), ("test_split", test_split)]:
            if split not in SPLIT_SEEDS:
                raise ValueError(f"`{name}`={split!r} is not one of {sorted(SPLIT_SEEDS)}")
        self.classnames = tuple(classnames or CLASSES)
        self.domains = tuple(domains or DOMAINS)
        World("test", 1, size, seed, self.classnames, self.domains)  # validates the names eagerly
        self.n_per_cell, self.size, self.seed = n_per_cell, size, seed
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.batch_size, self.num_workers, self.transform = batch_size, num_workers, transform
        self.save_hyperparameters(ignore=["transform"])

    def dataset(self, which: str) -> Dataset:
        from .data.datasets import WorldDataset
        world = World(self.splits[which], self.n_per_cell, self.size, self.seed, self.classnames, self.domains)
        return WorldDataset(world, self._transform())


class FolderDataModule(_Loaders):
    """Images in ``root/<domain>/<class>/<image>`` (PACS, DomainNet, Office-Home layout; see
    :class:`~lightning_unlearn.data.datasets.DomainFolderDataset`); batches of
    ``(image, class, domain)``. ``val_root`` / ``test_root`` / ``train_root`` default to ``root``.

    ``classnames`` / ``domains`` fix the label order (default: sorted folder names); they are read
    in ``setup``.

    Raises:
        ValueError: ``batch_size`` below 1 or ``num_workers`` below 0; in ``setup``, roots whose
            classes or domains differ.
        FileNotFoundError: a root that is not a folder.
    """

    def __init__(self, root: str, batch_size: int = 64, num_workers: int = 0,
                 classnames: Optional[list[str]] = None, domains: Optional[list[str]] = None,
                 train_root: Optional[str] = None, val_root: Optional[str] = None, test_root: Optional[str] = None,
                 transform: Optional[Callable] = None):
        super().__init__()
        _check_loader_args(batch_size, num_workers)
        self.roots = {"train": train_root or root, "val": val_root or root, "test": test_root or root}
        for name, path in self.roots.items():
            if not Path(path).is_dir():
                raise FileNotFoundError(f"the {name} root {path!r} is not a folder; expected <root>/<domain>/<class>/"
                                        "<image> (e.g. an unpacked PACS)")
        self.given = (classnames, domains)
        self.classnames: Optional[tuple[str, ...]] = tuple(classnames) if classnames else None
        self.domains: Optional[tuple[str, ...]] = tuple(domains) if domains else None
        self.batch_size, self.num_workers, self.transform = batch_size, num_workers, transform
        self._datasets: dict[str, Dataset] = {}
        self.save_hyperparameters(ignore=["transform"])

    def dataset(self, which: str) -> Dataset:
        if which not in self._datasets:
            from .data.datasets import DomainFolderDataset
            classnames, domains = self.given
            ds = DomainFolderDataset(self.roots[which], self._transform(), domains=domains, classnames=classnames)
            if self.classnames is not None and (tuple(ds.classnames), tuple(ds.domains)) != (self.classnames,
                                                                                          self.domains):
                raise ValueError(f"{self.roots[which]} has classes {list(ds.classnames)} and domains "
                                 f"{list(ds.domains)}, unlike the other split ({list(self.classnames)}, "
                                 f"{list(self.domains)}); pass `classnames=` and `domains=` to fix the label order")
            self.classnames, self.domains = tuple(ds.classnames), tuple(ds.domains)
            self._datasets[which] = ds
        return self._datasets[which]

    def setup(self, stage: str) -> None:
        for which in {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                      "predict": ("test",)}[stage]:
            self.dataset(which)


__all__ = ["FolderDataModule", "WorldDataModule"]
