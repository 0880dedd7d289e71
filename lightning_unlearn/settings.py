"""The typed settings of an edit (see :class:`~lightning_unlearn.config.UnlearnConfig`): each solver's own
(:class:`TwoSided`, :class:`Projector`, :class:`Regularized`), the visual prototypes' (:class:`PrototypeSettings`)
and the deep mode's (:class:`Deep`). A setting a solver does not read is not one of its fields.

Two settings name a choice made per request: ``proto_steps="auto"`` (:data:`AUTO_PROTO_STEPS`) and
``retain_cell_weight="auto"`` (:data:`AUTO_RETAIN_CELL_WEIGHT`). Edit ids and checkpoints written before
"auto" existed hold None for it, so None is read as "auto".
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import ClassVar

from .prompts import ATTRIBUTE_PROMPTS
from .request import ForgetRequest

#: What the projector and the regularised solver keep exactly.
PROTECT = ("none", "classes", "cells")
#: The value of a setting that is chosen per request (``proto_steps``, ``retain_cell_weight``).
AUTO = "auto"
#: Prototype steps when ``proto_steps`` is "auto", by what is synthesised, chosen on every request of each
#: paradigm (README "Prototype settings per paradigm"): class requests need 120 (domain-specific: for
#: every cell to stay forgotten; global: fewer prototypes or steps held on single classes but cost
#: retain accuracy on requests of several classes); whole domains (every cell synthesised) held at
#: every seed with 30, better than 60; the deep mode's eraser (one prototype of every cell) 60.
AUTO_PROTO_STEPS = {"global": 120, "domain-specific": 120, "domain": 30, "eraser": 60}
#: ``retain_cell_weight`` when it is "auto", by paradigm: a whole domain keeps every retained cell's prompt
#: direction where it is (measured on every domain at edit seeds 0-2, 50 test images per cell: the
#: worst retained cell lost up to 10 points without, at most 2 with weights 900 and 10,000, 4 with
#: weight 4; benchmarks/self_check.py). Requests of several domains get none: there the constraints
#: cost retained cells (sketch and painting: 24-26 points with weights 100-900, 6 with 9, none with
#: 0-4; no pair lost anything without them). Class requests are left as they were (not measured).
AUTO_RETAIN_CELL_WEIGHT = {"global": 0.0, "domain-specific": 0.0, "domain": 900.0, "domains": 0.0}
#: Where prototypes start (``proto_start``): from noise, or warm from their class's images.
STARTS = ("noise", "class")


# ---------------------------------------------------------------------------------------------- value checks
def one_of(name: str, value, allowed: tuple) -> None:
    """Raise a ValueError naming ``name``, ``value`` and ``allowed`` unless ``value`` is in ``allowed``."""
    if value not in allowed:
        raise ValueError(f"`{name}`={value!r} is not one of {allowed}")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _finite(part, name: str, positive: bool = False) -> None:
    """``part.<name>`` must be a finite number >= 0 (a weight), or > 0 with ``positive``."""
    value = getattr(part, name)
    if not _number(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"`{name}`={value!r} must be a finite number {'>' if positive else '>='} 0 "
                         f"({'' if positive else 'a weight; '}default {_default(part, name)})")


def _count(name: str, value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}`={value!r} ({what}) must be an integer >= 1")


def _default(part, name: str):
    return type(part).__dataclass_fields__[name].default


def _auto(part, name: str) -> None:
    """Read None (how edit ids and checkpoints store "auto") as "auto"."""
    if getattr(part, name) is None:
        object.__setattr__(part, name, AUTO)


def field_names(cls) -> tuple[str, ...]:
    """The field names of a dataclass (or of an instance), in order."""
    return tuple(f.name for f in dataclasses.fields(cls))


# ---------------------------------------------------------------------------------------------- the parts
@dataclass(frozen=True)
class PrototypeSettings:
    """The visual prototypes: read under method "multimodal" (the surface edit's prototypes) and by the
    deep mode's eraser (``proto_steps``, ``proto_lr``, ``seed``; its count is ``Deep.deep_prototypes``).

    Attributes:
        n_prototypes: visual prototypes synthesised per (class, domain) cell.
        proto_steps: synthesis steps per prototype, or "auto" (the default): the steps of
            :data:`AUTO_PROTO_STEPS` for the request's paradigm (and "eraser" for the deep eraser).
            None is read as "auto".
        proto_lr: learning rate of the prototype synthesis.
        seed: seed of the prototypes' starting noise and jitter.
        proto_start: where a cell's prototypes start: "noise" (the default) or "class" (a warm start:
            the first half of the steps synthesises the cell's class from its class text, each cell of
            the class then starts from those images; :class:`~lightning_unlearn.directions.Start`).
            The cell stage keeps the early stop, so a cell whose class images are already classified
            may stop at its first check. The self-check's held-out prototypes, correction rounds
            and the deep eraser always start from noise.
            Measured on every request of the embedded world at edit seeds 0-4 (benchmarks/self_check.py,
            variant "warm"): class requests meet every target as often (global 50 of 50 runs,
            domain-specific 141 of 200) with about a third fewer image-steps, but the worst forgotten
            cell is higher (0.46 against 0.32) and whole domains lose targets (17 of 20 runs, pairs 10
            of 30), so it is opt-in. It is not part of an edit's id at "noise": ids recorded before it
            stay valid.

    Raises:
        ValueError: a count below 1, ``proto_steps`` neither "auto" nor an integer >= 1, a
            learning rate that is not a finite number > 0, or ``proto_start`` not in :data:`STARTS`.
    """
    n_prototypes: int = 4
    proto_steps: int | str = AUTO
    proto_lr: float = 0.05
    seed: int = 0
    proto_start: str = "noise"

    def __post_init__(self):
        _auto(self, "proto_steps")
        _count("n_prototypes", self.n_prototypes, "visual prototypes per cell")
        if self.proto_steps != AUTO:
            _count("proto_steps", self.proto_steps, "synthesis steps per prototype, or 'auto'")
        _finite(self, "proto_lr", positive=True)
        one_of("proto_start", self.proto_start, STARTS)

    def steps(self, what: str) -> int:
        """``proto_steps``, or when it is "auto" the steps of :data:`AUTO_PROTO_STEPS` for ``what`` (a
        request's paradigm, or "eraser")."""
        return AUTO_PROTO_STEPS[what] if self.proto_steps == AUTO else self.proto_steps


@dataclass(frozen=True)
class Deep:
    """The deep mode (depth "deep"): the output eraser of :func:`~lightning_unlearn.deep.output_eraser`
    applied before the surface edit. Its directions are not a setting: it removes, per forgotten
    group, the gap between the group's mean output and the retained cells' mean; when ``evidence``
    holds real images of *every* cell it also removes the same gap of the L2-normalised outputs
    (measured: from prototypes that second direction costs retained accuracy and reaches no depth).
    Which of the two it did is recorded in the edit's stats (``eraser_normalised``).

    Attributes:
        deep_prototypes: prototypes per cell the eraser reads where no evidence is given (their steps,
            learning rate and seed are the :class:`PrototypeSettings` settings; "auto" steps: 60).

    Raises:
        ValueError: ``deep_prototypes`` below 1.
    """
    deep_prototypes: int = 1

    def __post_init__(self):
        _count("deep_prototypes", self.deep_prototypes, "prototypes per cell of the eraser")


@dataclass(frozen=True)
class TwoSided:
    """The default solver, ``M = M2 M1`` (see :func:`~lightning_unlearn.edit.compute_map`).

    Stage 1 (``text_first``) is the regularised closed form on text alone; it protects the kept
    classes, so it runs only when the request keeps a class: a whole-domain request keeps none, and
    its edit records ``text_first_skipped`` in its stats instead.

    Attributes:
        text_first: run the regularised text stage ``M1`` before the two-sided stage.
        lam: weight of the forgotten prompts in stage 1 (read only with ``text_first``).
        mu: weight of the retained prompts in stage 1 (read only with ``text_first``).
        text_weight: weight of the text constraints in the two-sided solve.
        image_weight: weight of the prototype constraints in the two-sided solve.
        margin: how far forgotten prototypes are sent past the sink class.
        sink_margin: how far whole-domain prototypes are sent towards the sink class.
        retain_prompts: generic attribute words whose scores the edit keeps (colours, sizes, ...).
        retain_cell_weight: weight of constraints that keep every retained cell's prompt direction in
            place in the image embedding (joint site, image tower), or "auto" (the default): the
            weight of :data:`AUTO_RETAIN_CELL_WEIGHT` for the request's paradigm. None is read as "auto".
        rounds: correction rounds after the edit (method "multimodal", site "joint"; 0 = none): held-out
            prototypes the edit gets wrong become constraints (:func:`correction.correct`).

    Raises:
        ValueError: a weight that is not a finite number >= 0 (``lam``: > 0), a negative margin,
            ``rounds`` not an integer >= 0, or ``lam`` / ``mu`` set with ``text_first=False``.
    """
    name: ClassVar[str] = "two-sided"
    text_first: bool = True
    lam: float = 30.0
    mu: float = 1.0
    text_weight: float = 1000.0
    image_weight: float = 100.0
    margin: float = 0.75
    sink_margin: float = 0.25
    retain_prompts: tuple = ATTRIBUTE_PROMPTS
    retain_cell_weight: float | str = AUTO
    rounds: int = 0

    def __post_init__(self):
        object.__setattr__(self, "retain_prompts", tuple(self.retain_prompts))
        _auto(self, "retain_cell_weight")
        _finite(self, "lam", positive=True)
        for name in ("mu", "text_weight", "image_weight"):
            _finite(self, name)
        if self.retain_cell_weight != AUTO and (not _number(self.retain_cell_weight) or self.retain_cell_weight < 0):
            raise ValueError(f"`retain_cell_weight`={self.retain_cell_weight!r} must be 'auto' (per paradigm) or a "
                             "finite number >= 0")
        if not self.margin >= 0 or not self.sink_margin >= 0:
            raise ValueError(f"`margin`={self.margin} and `sink_margin`={self.sink_margin} must be >= 0 (how far past "
                             "the sink forgotten prototypes are sent; defaults 0.75 and 0.25)")
        if not isinstance(self.rounds, int) or isinstance(self.rounds, bool) or self.rounds < 0:
            raise ValueError(f"`rounds`={self.rounds!r} must be an integer >= 0 (correction rounds; 0 = none)")
        for name in ("lam", "mu") if not self.text_first else ():
            if getattr(self, name) != _default(self, name):
                raise ValueError(f"`{name}`={getattr(self, name)!r} has no effect: text_first=False skips stage 1; "
                                 f"pass text_first=True or leave `{name}` at its default ({_default(self, name)!r})")

    def cell_weight(self, request: ForgetRequest) -> float:
        """``retain_cell_weight``, or when it is "auto" the weight of :data:`AUTO_RETAIN_CELL_WEIGHT` for the
        request's paradigm ("domains": whole domains, several of them)."""
        if self.retain_cell_weight != AUTO:
            return self.retain_cell_weight
        several = request.paradigm == "domain" and len(request.forget_domains) > 1
        return AUTO_RETAIN_CELL_WEIGHT["domains" if several else request.paradigm]


@dataclass(frozen=True)
class _PromptSolver:
    """What the projector and the regularised solver share: the prompt directions they read.

    Attributes:
        protect: what is kept exactly: "classes", "cells" or "none".
        center: centre prompt directions on the mean prompt before solving.
    """
    protect: str = "classes"
    center: bool = True

    def __post_init__(self):
        one_of("protect", self.protect, PROTECT)


@dataclass(frozen=True)
class Projector(_PromptSolver):
    """The paper's exact nullspace projector (:func:`~lightning_unlearn.nullspace.nullspace_basis`).

    Attributes:
        protect: what is kept exactly: "classes", "cells" or "none".
        center: centre prompt directions on the mean prompt before solving.
        energy: share of the forget directions' spectral energy the projector removes.
        retain_energy: share of the retain directions' spectral energy it protects.

    Raises:
        ValueError: ``protect`` not one of :data:`PROTECT`, an energy outside (0, 1].
    """
    name: ClassVar[str] = "projector"
    energy: float = 0.99
    retain_energy: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        for name in ("energy", "retain_energy"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}`={getattr(self, name)!r} must be in (0, 1] (a fraction of spectral "
                                 f"energy; default {_default(self, name)})")


@dataclass(frozen=True)
class Regularized(_PromptSolver):
    """The regularised closed form of 2512.14137 (:func:`~lightning_unlearn.nullspace.regularized_edit`).

    Attributes:
        protect: what is kept exactly: "classes", "cells" or "none".
        center: centre prompt directions on the mean prompt before solving.
        lam: weight of the forgotten prompts.
        mu: weight of the retained prompts.

    Raises:
        ValueError: ``protect`` not one of :data:`PROTECT`, ``lam`` not > 0 or ``mu`` not >= 0.
    """
    name: ClassVar[str] = "regularized"
    lam: float = 30.0
    mu: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        _finite(self, "lam", positive=True)
        _finite(self, "mu")


SOLVER_CLASSES = {cls.name: cls for cls in (TwoSided, Projector, Regularized)}
