"""How an edit is computed: :class:`UnlearnConfig`, the settings every edit reads and the typed parts of
the choice made (:mod:`~lightning_unlearn.settings`).

:class:`UnlearnConfig` holds the settings every edit reads (method, alpha, towers, site, class
templates, depth) and three typed parts: the chosen solver's settings (:class:`TwoSided`,
:class:`Projector` or :class:`Regularized`), the visual prototypes' (:class:`PrototypeSettings`, under
method "multimodal" and in the deep mode) and the deep mode's (:class:`Deep`, depth "deep" only). A
setting the choice does not read is not in its part. :class:`UnlearnConfig` also takes every
setting as a flat keyword (``UnlearnConfig(solver="projector", energy=0.9)``) and sorts it into its
part; a keyword the choice does not read is refused unless it is at its default, with the setting,
why and the fix named. ``proto_steps`` and ``retain_cell_weight`` default to "auto" (chosen per
request); :meth:`UnlearnConfig.to_dict` writes "auto" as None, as edit ids always held it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import check_fields
from .prompts import CLASS_TEMPLATES, validate_templates
from .request import ForgetRequest
from .settings import (  # noqa: F401 - the typed settings, importable from here
    AUTO,
    AUTO_PROTO_STEPS,
    AUTO_RETAIN_CELL_WEIGHT,
    PROTECT,
    SOLVER_CLASSES,
    Deep,
    Projector,
    PrototypeSettings,
    Regularized,
    TwoSided,
    field_names,
    one_of,
)
from .sites import SITES, TOWERS

METHODS = ("multimodal", "text")
SOLVERS = ("two-sided", "projector", "regularized")
DEPTHS = ("shallow", "deep")
#: The settings every edit reads, in the order edit ids list them.
COMMON_FIELDS = ("method", "solver", "alpha", "towers", "site", "class_templates", "depth")
_PARTS = (PrototypeSettings, TwoSided, Projector, Regularized, Deep)
#: Every flat keyword :class:`UnlearnConfig` takes, and its default.
DEFAULTS = {"method": "multimodal", "solver": "two-sided", "alpha": 1.0, "towers": ("image",), "site": "joint",
            "class_templates": CLASS_TEMPLATES, "depth": "shallow"} | {
    f.name: f.default for cls in _PARTS for f in dataclasses.fields(cls)}
KEYWORDS = tuple(DEFAULTS)


def _flat(part) -> dict:
    """A part's settings by name (not recursive: tuples stay tuples)."""
    return {} if part is None else {f.name: getattr(part, f.name) for f in dataclasses.fields(part)}


def _setting(value):
    """``value`` as a setting compares: a list as the tuple it holds, None as "auto"."""
    return AUTO if value is None else tuple(value) if isinstance(value, list) else value


def _refusal(name: str, value, cfg: UnlearnConfig) -> str:
    """Why the flat keyword ``name`` (set to ``value``) has no effect under ``cfg``, and the fix."""
    users = [s for s, cls in SOLVER_CLASSES.items() if name in field_names(cls)]
    why, fix = ((f"method={cfg.method!r} builds no visual prototypes", "pass method='multimodal'")
                if name in field_names(PrototypeSettings) else
                ("depth='shallow' builds no eraser", "pass depth='deep'") if name in field_names(Deep) else
                ("correction rounds need method='multimodal', solver='two-sided' and site='joint'", "use those")
                if name == "rounds" else
                (f"solver={cfg.solver!r} ignores it", f"pass solver={users[0]!r}"))
    return (f"`{name}`={value!r} has no effect: {why}; {fix} or leave `{name}` at its default "
            f"({DEFAULTS[name]!r})")


@dataclass(frozen=True, init=False)
class UnlearnConfig:
    """How the edit is computed: the settings every edit reads and the typed parts of the choice made.

    Built from flat keywords, ``UnlearnConfig(solver="projector", energy=0.9)``, or from the parts,
    ``UnlearnConfig(solver=Projector(energy=0.9))``; each keyword goes to its part, and a keyword the
    chosen method, solver or depth does not read is refused unless it is at its default. Reading
    ``config.<keyword>`` (e.g. ``config.lam``) gives the part's value, or the default where the choice
    has no such setting. ``dataclasses.replace(config, **keywords)`` takes flat keywords too. The
    edit id covers the acting settings only (:meth:`acting_fields`, :meth:`to_dict`).

    Attributes:
        method: "multimodal" (text constraints + visual prototypes, 2512.14113) or "text" (prompts only,
            2512.14137).
        alpha: strength in [0, 1]; the map is ``I + alpha (M - I)`` (0 = no edit).
        towers: the towers to edit, a subset of ``("image", "text")`` (a single name is accepted).
        site: "joint" (the d x d map after the projection) or "pooled" (D x D before it; image only).
        class_templates: prompt templates of the class vectors (``{c}``: the class name).
        depth: "shallow" (the surface edit) or "deep" (+ the output eraser; joint site, image tower,
            no whole domains).
        solver_config: the chosen solver's settings: :class:`TwoSided` (solver "two-sided", the
            default), :class:`Projector` ("projector") or :class:`Regularized` ("regularized").
        prototypes: the visual prototypes' settings (:class:`PrototypeSettings`), under method "multimodal" or
            depth "deep"; None otherwise.
        deep: the deep mode's settings (:class:`Deep`) under depth "deep"; None otherwise.

    Raises:
        ValueError: a setting outside its allowed values, or a keyword set that the chosen method,
            solver or depth does not read.
        TypeError: a keyword that is no setting at all.
    """
    method: str = "multimodal"
    alpha: float = 1.0
    towers: tuple = ("image",)
    site: str = "joint"
    class_templates: tuple = CLASS_TEMPLATES
    depth: str = "shallow"
    solver_config: TwoSided | Projector | Regularized = field(default_factory=TwoSided)
    prototypes: PrototypeSettings | None = field(default_factory=PrototypeSettings)
    deep: Deep | None = None

    def __init__(self, method: str = "multimodal", solver: str | TwoSided | Projector | Regularized | None = None,
                 alpha: float = 1.0, towers=("image",), site: str = "joint", class_templates=CLASS_TEMPLATES,
                 depth: str = "shallow", *, solver_config=None, prototypes: PrototypeSettings | None = None,
                 deep: Deep | None = None, **settings):
        if isinstance(solver, tuple(SOLVER_CLASSES.values())):
            solver_config, solver = solver, None
        name = solver if solver is not None else solver_config.name if solver_config is not None else "two-sided"
        check_fields(settings, KEYWORDS, "UnlearnConfig setting(s)", TypeError)
        self._set_common(method, name, alpha, towers, site, class_templates, depth)
        self._set_parts(name, _flat(solver_config) | _flat(prototypes) | _flat(deep) | settings)

    def _set_common(self, method, solver, alpha, towers, site, class_templates, depth) -> None:
        for key, value, allowed in [("method", method, METHODS), ("solver", solver, SOLVERS), ("site", site, SITES),
                                    ("depth", depth, DEPTHS)]:
            one_of(key, value, allowed)
        if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`alpha`={alpha!r} must be a number in [0, 1] (0 = no edit, 1 = full forgetting)")
        given, towers = towers, (towers,) if isinstance(towers, str) else tuple(towers)
        if not towers or any(t not in TOWERS for t in towers) or len(set(towers)) != len(towers):
            raise ValueError(f"`towers`={given!r} must be a non-empty subset of {TOWERS}")
        if site == "pooled" and "text" in towers:
            raise ValueError("`site`='pooled' edits the image tower only; use towers=('image',) or site='joint'")
        if depth == "deep" and (site != "joint" or "image" not in towers):
            raise ValueError(f"`depth`='deep' erases at the image output: it needs site='joint' and the image tower, "
                             f"got site={site!r}, towers={towers}")
        for key, value in [("method", method), ("alpha", alpha), ("towers", towers), ("site", site), ("depth", depth),
                           ("class_templates", validate_templates(class_templates, "c", "class_templates"))]:
            object.__setattr__(self, key, value)

    def _set_parts(self, solver: str, settings: dict) -> None:
        """Sort the flat ``settings`` into the parts the choice reads; refuse the others unless at their default."""
        def take(cls, *skip):
            return {k: settings.pop(k) for k in field_names(cls) if k in settings and k not in skip}
        solver_config = SOLVER_CLASSES[solver](**take(SOLVER_CLASSES[solver]))
        object.__setattr__(self, "solver_config", solver_config)
        if getattr(solver_config, "rounds", 0) and not self.corrects():
            raise ValueError(_refusal("rounds", solver_config.rounds, self))
        multimodal, deep = self.method == "multimodal", self.depth == "deep"
        skip = () if multimodal else ("n_prototypes", "proto_start")  # the deep eraser's prototypes start from noise
        protos = PrototypeSettings(**take(PrototypeSettings, *skip)) if multimodal or deep else None
        object.__setattr__(self, "prototypes", protos)
        object.__setattr__(self, "deep", Deep(**take(Deep)) if deep else None)
        for key, value in settings.items():
            if _setting(value) != _setting(DEFAULTS[key]):
                owner = next((c for c in (*SOLVER_CLASSES.values(), PrototypeSettings, Deep)
                              if key in field_names(c)), None)
                if owner is not None:
                    owner(**{key: value})  # a value no choice accepts gets its own error first
                raise ValueError(_refusal(key, value, self))

    def __getattr__(self, name: str):
        """A flat keyword's value (``config.lam``): the part's, or the default where the choice has none."""
        if name in DEFAULTS:
            for part in map(self.__dict__.get, ("solver_config", "prototypes", "deep")):
                if part is not None and name in part.__dataclass_fields__:
                    return getattr(part, name)
            return DEFAULTS[name]
        raise AttributeError(f"'UnlearnConfig' object has no attribute {name!r}")

    @property
    def solver(self) -> str:
        """The chosen solver's name ("two-sided", "projector" or "regularized")."""
        return self.solver_config.name

    def prototype_steps(self, what: str) -> int:
        """Prototype steps for ``what`` (a request's paradigm, or "eraser"): see :meth:`PrototypeSettings.steps`."""
        return (self.prototypes or PrototypeSettings()).steps(what)

    def cell_weight(self, request: ForgetRequest) -> float:
        """The two-sided solver's retained-cell weight for ``request`` (see :meth:`TwoSided.cell_weight`; the
        per-paradigm default under the other solvers, which have no such setting)."""
        two_sided = self.solver_config if isinstance(self.solver_config, TwoSided) else TwoSided()
        return two_sided.cell_weight(request)

    def corrects(self) -> bool:
        """Whether correction ``rounds`` can act: the two-sided multimodal edit at the joint site."""
        return self.method == "multimodal" and self.solver == "two-sided" and self.site == "joint"

    def acting_fields(self) -> tuple[str, ...]:
        """The flat keywords the computed edit depends on under this method, solver and depth."""
        protos = field_names(PrototypeSettings) if self.method == "multimodal" else ()
        if self.proto_start == "noise":  # the setting came later: ids recorded before it hold none
            protos = tuple(n for n in protos if n != "proto_start")
        deep = ("deep_prototypes", "proto_steps", "proto_lr", "seed") if self.deep is not None else ()  # the eraser's
        rounds = ("rounds",) if self.corrects() else ()
        stage1 = self.solver != "two-sided" or self.solver_config.text_first  # lam and mu: stage 1's
        solver = tuple(n for n in field_names(self.solver_config) if n != "rounds" and (stage1 or n not in ("lam", "mu")))
        return COMMON_FIELDS + protos + solver + tuple(f for f in deep if f not in protos) + rounds

    def to_dict(self) -> dict:
        """The acting settings by flat keyword (:meth:`acting_fields`), "auto" written as None: the input of
        :func:`~lightning_unlearn.state.edit_id` (ids and checkpoints stored None before "auto" existed)."""
        values = {"method": self.method, "solver": self.solver, "alpha": self.alpha, "towers": self.towers,
                  "site": self.site, "class_templates": self.class_templates, "depth": self.depth}
        values |= _flat(self.prototypes) | _flat(self.solver_config) | _flat(self.deep)
        return {k: None if values[k] == AUTO else values[k] for k in self.acting_fields()}
