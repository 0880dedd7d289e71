"""Prototype synthesis shared by the ranks of a multi-process strategy.

:func:`integration.compute_edit_` sets a :class:`Shard` (from the Trainer's strategy) around the
edit; :func:`directions.prototype_columns` consults it. The batches stay what they are in one
process (keyed by their cells, the same early stop); each batch's images are dealt round-robin to
the ranks (image ``i`` to rank ``i % world``), every rank synthesises its share, the batch stops when
every rank's share would stop (one collective every ``check_every`` steps), and the columns are
all-gathered, so every rank solves the same system from the same columns. An image depends only on
its own text, key and the seed (the jitter is the same on every rank), so the columns are those of one
process wherever the kernels give a row the same result whatever the batch size (measured on CPU:
maps bit-identical, ``tests/test_lightning.py``).

Every collective here first asks whether a rank has failed (``vote(False, all=False)``, matching the
``vote(True, all=False)`` of a failing rank in :func:`integration.compute_edit_`): the healthy ranks
then raise :class:`PeerFailedError` at their next collective instead of waiting in it. This assumes
what a multi-process edit assumes anyway: every rank computes the same request on the same model.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from .errors import UnlearnError


class PeerFailedError(UnlearnError, RuntimeError):
    """Another rank failed while this one was computing its share of the edit."""


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` ranks and the collectives the shared synthesis needs:
    ``vote(decision, all)`` (a strategy's ``reduce_boolean_decision``) and ``gather(tensor)`` ->
    ``world x *tensor.shape`` (a strategy's ``all_gather``, on CPU tensors)."""
    rank: int
    world: int
    vote: Callable[..., bool]
    gather: Callable[[torch.Tensor], torch.Tensor]

    def _check(self) -> None:
        if self.vote(False, all=False):
            raise PeerFailedError(f"another rank failed while rank {self.rank} was synthesising its share")

    def every(self, flags: torch.Tensor) -> torch.Tensor:
        """Per flag: True where it holds on every rank (raises :class:`PeerFailedError` if a rank failed)."""
        self._check()
        return self.gather(flags.to(torch.int32)).bool().all(0)

    def some(self, flags: torch.Tensor) -> torch.Tensor:
        """Per flag: True where it holds on some rank (raises :class:`PeerFailedError` if a rank failed)."""
        self._check()
        return self.gather(flags.to(torch.int32)).bool().any(0)

    def least(self, value: int) -> int:
        """The smallest of every rank's ``value`` (e.g. the images per batch each rank's memory holds:
        every rank must cut the same batches)."""
        self._check()
        return int(self.gather(torch.tensor([int(value)], dtype=torch.int64)).min())

    def rows(self, own: torch.Tensor, total: int) -> torch.Tensor:
        """Every rank's share put together: ``own`` holds this rank's rows (rows ``rank::world`` of
        ``total``), result row ``i`` comes from rank ``i % world``; each rank sends about
        ``total / world`` rows."""
        self._check()
        per = -(-total // self.world)
        mine = torch.zeros(per, *own.shape[1:], dtype=own.dtype)
        mine[:len(own)] = own
        every = self.gather(mine.contiguous())  # world x per x ...
        i = torch.arange(total)
        return every[i % self.world, i // self.world]

    @classmethod
    def from_strategy(cls, strategy: Any) -> "Shard":
        """The shard of a Lightning strategy (``global_rank``, ``world_size``, ``reduce_boolean_decision``,
        ``all_gather`` on its ``root_device``): only the collectives it has set up."""
        device = getattr(strategy, "root_device", torch.device("cpu"))

        def gather(t: torch.Tensor) -> torch.Tensor:
            out = strategy.all_gather(t.to(device))
            return out.cpu().reshape(strategy.world_size, *t.shape)
        return cls(strategy.global_rank, strategy.world_size, strategy.reduce_boolean_decision, gather)


_CURRENT: ContextVar[Shard | None] = ContextVar("lightning_unlearn_shard", default=None)


def current() -> Shard | None:
    """The shard set by :func:`use`, or None (one process computes everything)."""
    return _CURRENT.get()


@contextlib.contextmanager
def use(shard: Shard | None) -> Iterator[Shard | None]:
    """Share the prototype synthesis inside the block as ``shard`` says (None: not shared)."""
    token = _CURRENT.set(shard if shard is not None and shard.world > 1 else None)
    try:
        yield shard
    finally:
        _CURRENT.reset(token)
