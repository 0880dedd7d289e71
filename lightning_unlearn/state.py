"""Edit state, Lightning-free: what identifies an edit, what it was computed on, and how it is stored.

Three identities, one name each:

* the **request digest** (:meth:`ForgetRequest.digest`): a hash of the request alone;
* the **edit id** (:func:`edit_id`): a hash of the request and the config, i.e. of everything the
  computed maps depend on; the callback and ``CLIPUnlearning`` use it to recognise their own edit
  in a model or a checkpoint;
* the **weights digest** (:func:`weights_digest`): sha256 of every unedited weight an edit was
  computed on (each projection apart, the rest as "backbone"), at each precision it may later be
  cast to; an edit artifact only re-applies to the same weights (:func:`check_digest`).

An injected edit carries its **provenance** (:func:`provenance`: request, request digest and
config as plain JSON data), built here once for :func:`~lightning_unlearn.edit.unlearn_` and for
:mod:`~lightning_unlearn.export`. The config is serialised one way, :func:`config_dict`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping

import torch
from torch import nn

from .request import ForgetRequest
from .sites import EditLinear
from .stack import projection_stacks, stacks, stored_edits

#: Bytes of the edit id as stored in a uint8 buffer (``CLIPUnlearning.computed_edit_id``).
EDIT_ID_LEN = 16


# ---------------------------------------------------------------------------------------------- config, provenance
def config_dict(config) -> dict:
    """An :class:`~lightning_unlearn.config.UnlearnConfig` (any dataclass) as plain JSON data (tuples become
    lists): the flat settings that act (``config.to_dict()``, where the config defines it), the edit id's input."""
    d = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
    return json.loads(json.dumps(d))


def provenance(request: ForgetRequest, config) -> dict:
    """What an injected edit records about itself: ``{"request", "request_digest", "config"}`` (plain JSON)."""
    return {"request": request.to_dict(), "request_digest": request.digest(), "config": config_dict(config)}


def edit_id(request: ForgetRequest | Mapping, config) -> str:
    """A short stable hash of what the edit depends on: the request and the config.

    Computed the same way from objects or from an edit's :func:`provenance` (``info["request"]``,
    ``info["config"]``)."""
    r = request.to_dict() if isinstance(request, ForgetRequest) else dict(request)
    c = config_dict(config) if dataclasses.is_dataclass(config) else dict(config)
    payload = json.dumps({"request": r, "config": c}, sort_keys=True, default=list)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def info_edit_id(info: Mapping) -> str | None:
    """The :func:`edit_id` of an injected edit's provenance ``info`` (``None`` if it has none)."""
    if "request" not in info or "config" not in info:
        return None
    return edit_id(info["request"], info["config"])


def map_digest(M: torch.Tensor) -> str:
    """sha256 (32 hex digits) of a map's shape and float32 values: what identifies an injected map in a
    chain of edits (``info["after"]``), in the duplicate check and in an edit file."""
    t = M.detach().float().cpu().contiguous()
    return hashlib.sha256(str(tuple(t.shape)).encode() + t.numpy().tobytes()).hexdigest()[:32]


def text_anchored(info: Mapping) -> bool:
    """Whether an edit's forgetting holds whatever image features reach it: a shallow global request,
    whose forgotten prompts score like the kept classes on every image. The others (domain-specific,
    whole domains, deep) forget by moving image features, and hold on the features they were computed
    on: a composed edit of theirs goes below the text-anchored ones (see ``edit.unlearn_``)."""
    req, cfg = info.get("request") or {}, info.get("config") or {}
    return bool(req.get("forget_classes")) and not req.get("forget_domains") and cfg.get("depth") != "deep"


def describe_info(info: Mapping) -> str:
    """The request an edit's provenance names, in words."""
    try:
        return ForgetRequest.from_dict(info["request"]).describe()
    except Exception:
        return "an unreadable request"


# ---------------------------------------------------------------------------------------------- checkpoint payloads
def edit_id_tensor(value: str) -> torch.Tensor:
    """``value`` (an edit id, or "" for none) as a fixed-size uint8 tensor for a persistent buffer."""
    return torch.tensor(list(value.encode().ljust(EDIT_ID_LEN, b"\0")[:EDIT_ID_LEN]), dtype=torch.uint8)


def edit_id_from_tensor(t: torch.Tensor) -> str:
    """The inverse of :func:`edit_id_tensor` ("" for none)."""
    return bytes(t.tolist()).rstrip(b"\0").decode(errors="replace")


def checkpoint_edits(state_dict: Mapping[str, Any], prefix: str) -> dict[str, tuple[dict, torch.Tensor]]:
    """Edits stored in a ``state_dict`` under ``prefix``: ``{key of P.weight: (info, M)}``
    (:func:`~lightning_unlearn.stack.stored_edits`, which knows how an edit stack's keys read)."""
    return stored_edits(state_dict, prefix)


# ---------------------------------------------------------------------------------------------- weights digest
#: Precisions a weights digest is taken in: values are rounded to the precision, then hashed.
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: The weights-digest entry covering every weight of the model besides the projections.
BACKBONE = "backbone"


def unedited_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter of ``model`` by its name in the unedited model (edits left out, the original
    of each edited tensor under its own name; layers an edit installed left out too)."""
    edited = stacks(model)
    originals = {id(st.original): st.key for st in edited}
    maps = {id(p) for st in edited for e in st.edits for p in e.parameters()}  # the edits' own
    installed = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, EditLinear))  # the edit's own layers
    return {originals.get(id(p), name): p for name, p in model.named_parameters()
            if id(p) not in maps and not name.startswith(installed)}


def _precision(tensors) -> str:
    """The lowest floating precision among ``tensors`` ("mixed" if both 16-bit kinds are present)."""
    low = {str(t.dtype).removeprefix("torch.") for t in tensors if t.is_floating_point()} & {"bfloat16", "float16"}
    return "mixed" if len(low) == 2 else low.pop() if low else "float32"


def _sha256(tensors: dict[str, torch.Tensor], precision: str) -> str:
    """sha256 of the names, shapes and values (floating values rounded to ``precision``) of ``tensors``."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        if t.is_floating_point():  # the values at that precision, as raw bytes (16-bit: half the bytes to hash)
            t = t.to(PRECISIONS[precision])
            t = t if precision == "float32" else t.view(torch.int16)
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(memoryview(t.cpu().contiguous().numpy()).cast("B"))
    return h.hexdigest()


def _entry(tensors: dict[str, torch.Tensor], **extra) -> dict:
    """A weights-digest entry: the lowest precision present, and the sha256 at that precision and at every
    lower one (so the same weights cast to bf16 / fp16 later are recognised)."""
    low = _precision(tensors.values())
    keys = tuple(PRECISIONS) if low == "float32" else ("float32",) if low == "mixed" else (low,)
    return extra | {"precision": low, "sha256": {k: _sha256(tensors, k) for k in keys}}


def weights_digest(model: nn.Module) -> dict[str, dict]:
    """What an edit is only re-applied to: every tower's unedited projection weight and bias
    (``{qualified name: {"tower", "shape", "precision", "sha256"}}``) and ``"backbone"``: every other
    weight of the model (both towers: the edit was computed through both). Each sha256 is taken of
    the values rounded to a precision (see :func:`check_digest`)."""
    out, projections = {}, projection_stacks(model)
    for key, (tower, st) in projections.items():
        t = st.original
        out[key] = _entry({key: t}, tower=tower, shape=list(t.shape))
    rest = {k: v for k, v in unedited_parameters(model).items() if k not in projections}
    out[BACKBONE] = _entry(rest, tower="all", n_tensors=len(rest), numel=sum(v.numel() for v in rest.values()))
    return out


def _model_tensors(model: nn.Module, key: str) -> dict[str, torch.Tensor] | None:
    params = unedited_parameters(model)
    if key != BACKBONE:
        return {key: params[key]} if key in params else None
    projections = projection_stacks(model)
    return {k: v for k, v in params.items() if k not in projections}


def _common(have: str, theirs: str) -> str | None:
    """The precision two weight sets can be compared at (None: not comparable)."""
    if have == theirs:
        return "float32" if have == "mixed" else have
    if "mixed" in (have, theirs) or "float32" not in (have, theirs):
        return None
    return theirs if have == "float32" else have


def check_digest(expected: dict, model: nn.Module) -> tuple[list[str], list[str]]:
    """Compare a :func:`weights_digest` with ``model``'s weights: (problems, notes), one sentence each.

    Values are compared at the lower of the two precisions (float32 weights and the same weights
    cast to bfloat16 match, with a note; float16 against bfloat16 cannot be compared and is a
    problem). Any change of any weight is a problem."""
    problems, notes = [], []
    for key, want in expected.items():
        what = "the rest of the model's weights (backbone)" if key == BACKBONE else f"`{key}` ({want.get('tower')} projection)"
        tensors = _model_tensors(model, key)
        if not tensors:
            problems.append(f"{what} is absent from the model")
            continue
        if "shape" in want and list(tensors[key].shape) != want["shape"]:
            problems.append(f"`{key}` has shape {tuple(tensors[key].shape)}, the edit was made for {tuple(want['shape'])}")
            continue
        have, theirs = _precision(tensors.values()), want.get("precision", "float32")
        common = _common(have, theirs)
        if common is None:
            problems.append(f"{what} is in {have}, the edit was computed in {theirs}: they cannot be compared; cast "
                            f"the model to {theirs} (or float32) first")
            continue
        sha = _sha256(tensors, common)
        if want.get("sha256", {}).get(common) != sha:
            problems.append(f"{what} has different values (sha256 at {common} {sha[:12]}..., the edit expects "
                            f"{str(want.get('sha256', {}).get(common))[:12]}...)" + (
                                "; the model was fine-tuned, or is another checkpoint" if key == BACKBONE else ""))
        elif have != theirs:
            notes.append(f"{what}: same weights, different precision (edit computed in {theirs}, model in {have})")
    return problems, notes


def missing_digest(expected, model: nn.Module, towers) -> list[str]:
    """Entries a complete weights digest for an edit of ``towers`` on ``model`` would have and ``expected``
    lacks (the check fails closed: what is not in the digest is not trusted)."""
    if not isinstance(expected, dict):
        return ["the whole weights digest"]
    # a tower without a supported site raises; a layer an edit installs has no weights of the model's to digest
    need = [BACKBONE, *projection_stacks(model, towers, strict=True)]
    return [k for k in need if not isinstance(expected.get(k), dict) or not expected[k].get("sha256")]
