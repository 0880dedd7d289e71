"""What to forget: a set of (class, domain) knowledge cells, validated against the label space."""
from __future__ import annotations

import difflib
import hashlib
import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .errors import UnlearnError
from .prompts import CELL_TEMPLATES, validate_templates

PARADIGMS = ("global", "domain-specific", "domain")
Cell = tuple[str, str]


class RequestError(UnlearnError, ValueError):
    """A forget request that cannot be served; the message says what and how to fix it."""


def normalize(name: str) -> str:
    """``name`` as the request stores it: surrounding whitespace stripped, Unicode NFC form."""
    return unicodedata.normalize("NFC", name.strip())


def _key(name: str) -> str:
    """What the tokenizer tells apart: names equal under this key are one class to CLIP."""
    return normalize(name).casefold()


def as_names(values: Sequence[str] | None, arg: str, allow_none: bool = False) -> tuple[str, ...] | None:
    """``values`` (a sequence, or one comma-separated string) as a tuple of unique non-empty names;
    raises :class:`RequestError` naming ``arg`` otherwise. ``None`` passes only with ``allow_none``.

    Names are normalised (:func:`normalize`: stripped, NFC). Two names that differ only in case,
    surrounding whitespace or Unicode form are the same prompt to a lower-casing CLIP tokenizer, so
    they are refused as duplicates rather than treated as two classes."""
    if values is None:
        if allow_none:
            return None
        raise RequestError(f"`{arg}` is required: give a list of names")
    if isinstance(values, str):
        values = values.split(",") if "," in values else [values]
    values = tuple(values)
    if not values:
        hint = " (or leave it out / pass None)" if allow_none else ""
        raise RequestError(f"`{arg}` is empty; give at least one name{hint}")
    bad = [v for v in values if not isinstance(v, str) or not v.strip()]
    if bad:
        raise RequestError(f"`{arg}` has empty or non-string names {bad!r}; every name must be a non-empty string")
    names = tuple(normalize(v) for v in values)
    first: dict[str, int] = {}
    dupes: list[str] = []
    for i, v in enumerate(values):
        j = first.setdefault(_key(v), i)
        if j != i:
            dupes += [x for x in dict.fromkeys((values[j], v)) if x not in dupes]
    if dupes:
        raise RequestError(f"`{arg}` has duplicate names {dupes}; give each name once (names that differ only in case, "
                           "surrounding whitespace or Unicode form are one class to the lower-casing tokenizer)")
    return names


def _resolve(values: tuple[str, ...] | None, universe: tuple[str, ...], arg: str,
             universe_arg: str) -> tuple[str, ...] | None:
    """``values`` spelled as in ``universe`` (matched case-insensitively); raises naming unknown names."""
    if values is None:
        return None
    spelled = {_key(u): u for u in universe}
    out = []
    for v in values:
        if _key(v) not in spelled:
            close = difflib.get_close_matches(v, universe, n=3)
            hint = f"; did you mean {close}?" if close else (
                f"; known names are {list(universe)}" if len(universe) <= 50 else
                f" ({len(universe)} names, e.g. {list(universe[:5])})")
            raise RequestError(f"`{arg}` name {v!r} is not in `{universe_arg}`{hint}")
        out.append(spelled[_key(v)])
    return tuple(out)


@dataclass(frozen=True)
class ForgetRequest:
    """Cells to forget among ``classnames`` x ``domains``.

    The paradigm follows from what is given: ``forget_classes`` only = "global" (those classes in
    every domain); classes and ``forget_domains`` = "domain-specific" (those classes in those
    domains); ``forget_domains`` only = "domain" (every class in those domains).

    Names are stripped and put in Unicode NFC form; names that then differ only in case are
    refused as duplicates (the CLIP tokenizer lower-cases, so they would be one class).
    ``forget_classes`` / ``forget_domains`` match case-insensitively and take the spelling of
    ``classnames`` / ``domains``.

    >>> r = ForgetRequest(["cat", "dog"], ["photo", "sketch"], forget_classes=["dog"], forget_domains=["sketch"])
    >>> r.paradigm, r.forget_cells
    ('domain-specific', (('dog', 'sketch'),))

    Raises:
        RequestError: a list missing, empty or holding empty / non-string / duplicate names, a forget
            name that is not in ``classnames`` / ``domains``, nothing to forget, or every cell forgotten
            (nothing retained).
    """
    classnames: Sequence[str]
    domains: Sequence[str]
    forget_classes: Sequence[str] | None = None
    forget_domains: Sequence[str] | None = None
    templates: Sequence[str] | None = None
    _cells: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("classnames", as_names(self.classnames, "classnames"))
        set_("domains", as_names(self.domains, "domains"))
        set_("forget_classes", as_names(self.forget_classes, "forget_classes", allow_none=True))
        set_("forget_domains", as_names(self.forget_domains, "forget_domains", allow_none=True))
        set_("templates", validate_templates(CELL_TEMPLATES if self.templates is None else self.templates, "c"))
        if self.forget_classes is None and self.forget_domains is None:
            raise RequestError("nothing to forget: give `forget_classes` (global), `forget_domains` (whole domains) "
                               "or both (those classes in those domains)")
        set_("forget_classes", _resolve(self.forget_classes, self.classnames, "forget_classes", "classnames"))
        set_("forget_domains", _resolve(self.forget_domains, self.domains, "forget_domains", "domains"))
        classes = set(self.forget_classes or self.classnames)
        domains = set(self.forget_domains or self.domains)
        forget = tuple((c, d) for c in self.classnames for d in self.domains if c in classes and d in domains)
        if len(forget) == len(self.classnames) * len(self.domains):
            raise RequestError(f"this request forgets every one of the {len(forget)} (class, domain) cells, so nothing "
                               "is retained; forget fewer classes or domains, or add the classes/domains to keep")
        set_("_cells", forget)

    @property
    def paradigm(self) -> str:
        if self.forget_domains is None:
            return "global"
        return "domain" if self.forget_classes is None else "domain-specific"

    @property
    def forget_cells(self) -> tuple[Cell, ...]:
        return self._cells

    @property
    def retain_cells(self) -> tuple[Cell, ...]:
        forget = set(self._cells)
        return tuple((c, d) for c in self.classnames for d in self.domains if (c, d) not in forget)

    @property
    def kept_classes(self) -> tuple[str, ...]:
        """Classes with no forgotten cell (none for whole-domain requests)."""
        forgotten = {c for c, _ in self._cells}
        return tuple(c for c in self.classnames if c not in forgotten)

    def same_class_other_domain_cells(self) -> tuple[Cell, ...]:
        """Retained cells of a forgotten class (domain-specific requests; empty otherwise)."""
        classes = {c for c, _ in self._cells}
        return tuple(cell for cell in self.retain_cells if cell[0] in classes)

    def to_dict(self) -> dict:
        return {"classnames": list(self.classnames), "domains": list(self.domains),
                "forget_classes": None if self.forget_classes is None else list(self.forget_classes),
                "forget_domains": None if self.forget_domains is None else list(self.forget_domains),
                "templates": list(self.templates)}

    @classmethod
    def from_dict(cls, d: dict) -> "ForgetRequest":
        return cls(**d)

    def digest(self) -> str:
        """A short stable hash of the request (names, forget sets and templates)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        what = {"global": f"classes {list(self.forget_classes or [])} in every domain",
                "domain-specific": f"classes {list(self.forget_classes or [])} in domains {list(self.forget_domains or [])}",
                "domain": f"every class in domains {list(self.forget_domains or [])}"}[self.paradigm]
        return f"{self.paradigm}: forget {what} ({len(self._cells)} cells, {len(self.retain_cells)} retained)"


def read_names(value: str | None, what: str) -> tuple[str, ...] | None:
    """Names from a comma-separated list, or ``@file`` with one name per line (blank lines and ``#``
    comments skipped); ``what`` names the value in errors (``ValueError``)."""
    if value is None:
        return None
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise ValueError(f"{what}: names file {path} does not exist" if not path.exists()
                             else f"{what}: {path} is not a file")
        try:
            text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not a name
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{what}: cannot read names file {path}: {e}") from e
        names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        if not names:
            raise ValueError(f"{what}: names file {path} is empty; put one name per line")
        return tuple(names)
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise ValueError(f"{what} is empty; give a comma-separated list such as 'cat,dog', or @file with one name "
                         "per line")
    return tuple(names)
