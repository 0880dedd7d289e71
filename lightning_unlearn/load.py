"""Loading an open_clip model by name: the embedded world model, an architecture with a weights file,
or a ``local-dir:`` folder, with its preprocess, tokenizer and model config.

:func:`load_clip` is the one loading path of the command line, ``CLIPUnlearning`` and the
benchmarks. Weights are read with ``weights_only=True`` (or from safetensors), so loading never
runs code; a file that does not fit names the keys that differ. Errors are :class:`LoadError`.
"""
from __future__ import annotations

import difflib
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import open_clip

from . import embedded
from .errors import UnlearnError
from .localdir import WEIGHTS_NAME, describe_key_mismatch, quiet_open_clip, read_local_dir_config
from .prompts import CELL_TEMPLATES, CLASS_TEMPLATES

EMBEDDED = "embedded"


class LoadError(UnlearnError, ValueError):
    """A model or weights file that cannot be loaded (the message says what and why)."""


@dataclass
class LoadedCLIP:
    """What :func:`load_clip` returns. ``arch``: the name open_clip builds it from (``"world-clip"``,
    ``"ViT-B-32"``, ``"local-dir:DIR"``); ``model_cfg``: the architecture dict (what
    :func:`~lightning_unlearn.export.save_folded` needs). For the embedded model, the world's label
    names, colours and templates are filled in; otherwise they are ``None`` (templates: the defaults)."""
    model: object
    preprocess: object
    tokenizer: object
    arch: str
    model_cfg: dict
    label: str
    embedded: bool = False
    classnames: tuple | None = None
    domains: tuple | None = None
    colours: tuple | None = None
    templates: tuple = CLASS_TEMPLATES
    cell_templates: tuple = CELL_TEMPLATES
    colour_templates: tuple | None = None

    @property
    def model_config(self) -> dict:
        """``{"arch", "model_cfg"}``: enough to rebuild or export the architecture."""
        return {"arch": self.arch, "model_cfg": self.model_cfg}


def is_embedded(name: str | None) -> bool:
    return name is None or name in (EMBEDDED, embedded.MODEL_NAME)


def keys_from_torch_error(message: str) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, size mismatches) named in a torch ``load_state_dict`` error."""
    def quoted(label):
        m = re.search(label + r" key\(s\) in state_dict: (.*)", message)
        return re.findall(r'"([^"]+)"', m.group(1)) if m else []
    shapes = [f"{k} (checkpoint {a}, model {b})" for k, a, b in re.findall(
        r"size mismatch for ([\w.\-]+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from checkpoint, "
        r"the shape in current model is torch\.Size\((\[[^\]]*\])\)", message)]
    return quoted("Missing"), quoted("Unexpected"), shapes


def unpickling_error(path: Path, e: Exception, hint: str | None = None) -> LoadError:
    """The error for a file ``torch.load(weights_only=True)`` refused."""
    # torch names the refused global in two wordings: "Unsupported global: GLOBAL x" and, for modules it
    # blocks outright (os, posix, subprocess ...), "unsupported GLOBAL posix.system whose module ..."
    found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", str(e))
    if found:
        return LoadError(f"refusing to load {path}: it holds Python objects besides tensors ({found.group(1)}), and "
                         "checkpoints are read with torch.load(weights_only=True) so that loading cannot run code; "
                         + (hint or "save a plain state_dict (torch.save(model.state_dict(), ...)) or a safetensors "
                                    "file"))
    return LoadError(f"cannot read {path}: it is not a torch checkpoint or safetensors file, or it is damaged")


def check_weights_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise LoadError(f"weights file {path} does not exist")
    if not path.is_file():
        raise LoadError(f"weights path {path} is a folder; give a .safetensors or torch checkpoint file "
                        "(or a model folder as local-dir:DIR)")
    return path


def _diff_keys(model, path: Path, fallback):
    """(missing, unexpected, shape mismatches) of the file's tensors against ``model`` (a non-strict load
    stops at the first shape mismatch and names nothing else)."""
    from open_clip.factory import load_state_dict
    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception:  # noqa: BLE001 - keep what the load error named
        return fallback
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    shapes = [f"{k} (checkpoint {list(theirs[k])}, model {list(ours[k])})" for k in ours
              if k in theirs and theirs[k] != ours[k]]
    return sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours)), shapes


def load_weights(model, path: Path, name: str) -> None:
    """Load ``path`` into ``model`` (safetensors, or torch.load with weights_only=True); raise a
    :class:`LoadError` naming the keys if it does not fit."""
    try:
        incompatible = open_clip.load_checkpoint(model, str(path), strict=False, weights_only=True)
    except pickle.UnpicklingError as e:
        raise unpickling_error(path, e) from e
    except RuntimeError as e:
        missing, unexpected, shapes = keys_from_torch_error(str(e))
        if shapes or missing or unexpected:
            missing, unexpected, shapes = _diff_keys(model, path, (missing, unexpected, shapes))
            raise LoadError(f"weights {path} do not fit {name}: "
                            + describe_key_mismatch(missing, unexpected, shapes)) from e
        raise LoadError(f"cannot read weights {path}: {str(e).splitlines()[0]}") from e
    except StopIteration as e:
        raise LoadError(f"weights file {path} holds no tensors") from e
    except Exception as e:  # noqa: BLE001 - safetensors, zipfile, EOF ... all mean "unreadable"
        raise LoadError(f"cannot read weights {path} ({type(e).__name__}: {e}); expected a .safetensors file or a "
                        "torch checkpoint holding a state_dict") from e
    missing, unexpected = list(incompatible.missing_keys), list(incompatible.unexpected_keys)
    if missing or unexpected:
        if unexpected and all(k.startswith("model.") for k in unexpected):
            raise LoadError(f"weights {path} look like a Lightning checkpoint (their keys sit under 'model.'): convert "
                            f"it with `lightning-unlearn export {path} --output DIR` and load DIR as local-dir:DIR ("
                            + describe_key_mismatch(missing, unexpected, limit=3) + ")")
        raise LoadError(f"weights {path} do not match {name}: " + describe_key_mismatch(missing, unexpected))


def find_weights_in(folder: Path) -> Path:
    """The weights file of a local-dir model folder."""
    preferred = [WEIGHTS_NAME, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                 "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "model.pth"]
    for name in preferred:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pth"))
    found = [p for p in found if p.name != "edit.safetensors"]
    if not found:
        raise LoadError(f"model folder {folder} has no weights file (expected {WEIGHTS_NAME})")
    return found[0]


def _build(name: str, device: str):
    try:
        with quiet_open_clip():
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, load_weights=False,
                                                                         device=device)
    except Exception as e:  # noqa: BLE001 - a bad model_cfg surfaces as many types
        raise LoadError(f"open_clip cannot build {name}: {type(e).__name__}: {e}") from e
    return model, preprocess, open_clip.get_tokenizer(name)


def check_name(name: str | None) -> None:
    """Raise unless ``name`` is an open_clip model name (with close matches), ``local-dir:...`` or ``"embedded"``."""
    embedded.register()
    if is_embedded(name) or name.startswith("local-dir:"):
        return
    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        raise LoadError(f"unknown model {name!r}" + (f"; did you mean {close}?" if close else "")
                        + " (`python -c 'import open_clip; print(open_clip.list_models())'` lists them, or give "
                        "local-dir:DIR)")


def model_cfg_of(name: str | None) -> dict:
    """The architecture dict of a model name, ``local-dir:DIR`` (its config file) or ``"embedded"``."""
    check_name(name)
    if is_embedded(name):
        return open_clip.get_model_config(embedded.MODEL_NAME)
    if name.startswith("local-dir:"):
        return read_local_dir_config(name[len("local-dir:"):])["model_cfg"]
    return open_clip.get_model_config(name)


def load_clip(name: str | None = EMBEDDED, pretrained: str | Path | None = None, device: str = "cpu") -> LoadedCLIP:
    """The model ``name`` names, in eval mode, with its preprocess, tokenizer and model config.

    ``name``: ``"embedded"`` (or ``None`` / ``"world-clip"``: the shipped world model, or its
    architecture with ``pretrained`` weights), an open_clip architecture name (with ``pretrained``, a
    weights file; without, open_clip's random initialisation) or ``"local-dir:DIR"`` (a folder
    holding ``open_clip_config.json`` and its weights; ``pretrained`` must be ``None``).
    """
    if is_embedded(name):
        weights = check_weights_file(pretrained or embedded.WEIGHTS_PATH)
        try:
            e = embedded.load_embedded(weights, device=device)
        except Exception as ex:  # noqa: BLE001 - rebuild to name what does not fit
            model, _, _ = _build(embedded.register(), device)
            load_weights(model, weights, embedded.MODEL_NAME)
            raise LoadError(f"cannot load the embedded model from {weights}: {type(ex).__name__}: {ex}") from ex
        label = embedded.MODEL_NAME + ("" if pretrained is None else f" ({weights})")
        return LoadedCLIP(e.model, e.preprocess, e.tokenizer, embedded.MODEL_NAME,
                          open_clip.get_model_config(embedded.MODEL_NAME), label, True, e.classnames, e.domains,
                          e.colours, tuple(e.templates), tuple(e.cell_templates), tuple(e.colour_templates))
    if name.startswith("local-dir:") and pretrained:
        raise LoadError("`pretrained` is not used with a local-dir:DIR model (the folder holds its weights)")
    model_cfg = model_cfg_of(name)
    if name.startswith("local-dir:"):
        folder = Path(name[len("local-dir:"):])
        weights = find_weights_in(folder)
        model, preprocess, tokenizer = _build(f"local-dir:{folder}", device)
        load_weights(model, weights, name)
    else:
        model, preprocess, tokenizer = _build(name, device)
        if pretrained:
            load_weights(model, check_weights_file(pretrained), name)
    model.eval()
    return LoadedCLIP(model, preprocess, tokenizer, name, model_cfg, name)
