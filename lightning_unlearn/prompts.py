"""Prompt templates and the prompt sets of (class, domain) knowledge cells.

A template names the class with ``{c}`` (or a bare ``{}``) and may name the domain with ``{d}``.
"""
from __future__ import annotations

import string
from typing import Sequence

#: Domain-agnostic class templates: the zero-shot classifier and class-level forget directions.
CLASS_TEMPLATES = ("a {c}.", "a photo of a {c}.", "a sketch of a {c}.", "a cartoon of a {c}.",
                   "a painting of a {c}.")
#: Cell templates: one (class, domain) pair each.
CELL_TEMPLATES = ("a {d} of a {c}.", "a {d} of the {c}.", "the {c} in a {d}.")
#: Generic knowledge every edit keeps by default (two-sided solver): common attribute words, bare.
#: Colour words are among them, and colour is the embedded world's "unrelated task": the benchmark
#: also reports ``retain_prompts=()`` so the effect of this bank is visible.
ATTRIBUTE_PROMPTS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "black", "white",
                     "grey", "large", "small", "striped", "dotted", "shiny", "dark", "bright")
#: Domain-only templates.
DOMAIN_TEMPLATES = ("a {d}.", "a {d} of something.")


def _parse(template: str) -> list[tuple[str, str | None]]:
    """``template`` as (literal text, placeholder name or None) pairs; only bare ``{c}``, ``{d}`` and
    ``{}`` are placeholders (``{{`` / ``}}`` are literal braces)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"template {template!r} is not a valid format string ({e}); write literal braces as "
                         "{{ and }}") from None
    out = []
    for literal, name, spec, conversion in parts:
        if name is not None and (spec or conversion):
            raise ValueError(f"template {template!r} has the placeholder {{{name}{'!' + conversion if conversion else ''}"
                             f"{':' + spec if spec else ''}}}; placeholders take no format spec or conversion: use a "
                             "bare {c} (or {}) for the class and {d} for the domain")
        out.append((literal, None if name is None else name or "c"))
    return out


def fields(template: str) -> set[str]:
    """The placeholder names of ``template`` (``{}`` is reported as ``c``)."""
    names = {name for _, name in _parse(template) if name is not None}
    unknown = names - {"c", "d"}
    if unknown:
        raise ValueError(f"template {template!r} has unknown placeholders {sorted(unknown)}; "
                         "use {c} (or {}) for the class and {d} for the domain")
    return names


def fill_template(template: str, c: str | None = None, d: str | None = None) -> str:
    """Fill ``{}``/``{c}`` with the class and ``{d}`` with the domain (``{{``/``}}`` stay braces)."""
    names = fields(template)
    if "c" in names and c is None or "d" in names and d is None:
        raise ValueError(f"template {template!r} needs {sorted(names)}, got class={c!r}, domain={d!r}")
    return "".join(literal + ({"c": c, "d": d}[name] if name else "") for literal, name in _parse(template))


def validate_templates(templates: Sequence[str], need: str = "c", arg: str = "templates") -> tuple[str, ...]:
    """Check that every template has the ``need`` placeholder; return them as a tuple."""
    if isinstance(templates, str):
        raise TypeError(f"`{arg}` must be a sequence of strings, got the single string {templates!r}; wrap it in a list")
    templates = tuple(templates)
    if not templates:
        raise ValueError(f"`{arg}` is empty; give at least one template such as 'a photo of a {{c}}.'")
    for t in templates:
        if need not in fields(t):
            raise ValueError(f"template {t!r} in `{arg}` has no {{{need}}} placeholder "
                             f"(expected e.g. 'a photo of a {{{need}}}.'" + (" or '{}'" if need == "c" else "") + ")")
    return templates


def cell_prompts(c: str, d: str, templates: Sequence[str] = CELL_TEMPLATES) -> list[str]:
    """Prompts for the knowledge cell (class ``c``, domain ``d``)."""
    return [fill_template(t, c=c, d=d) for t in templates]
