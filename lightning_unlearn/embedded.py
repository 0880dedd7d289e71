"""The embedded default: a small open_clip CLIP trained on the rendered world (scripts/train_embedded_clip.py).

Loading goes through open_clip's own path: the config in ``assets/world-clip.json`` is registered
with ``open_clip.add_model_config`` under :data:`MODEL_NAME` and the weights are a safetensors file
passed as ``pretrained``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import open_clip

from .data.world import CLASSES, COLOUR_NAMES, DOMAINS
from .prompts import CELL_TEMPLATES, CLASS_TEMPLATES

MODEL_NAME = "world-clip"
ASSETS = Path(__file__).parent / "assets"
CONFIG_PATH = ASSETS / f"{MODEL_NAME}.json"
WEIGHTS_PATH = ASSETS / f"{MODEL_NAME}.safetensors"
#: Colour classifier templates: the unrelated task that unlearning must leave intact.
COLOUR_TEMPLATES = ("a {c} thing.", "something {c}.")


@dataclass
class Embedded:
    """What :func:`load_embedded` returns: the model and everything needed to use it on the world."""
    model: object
    preprocess: object
    tokenizer: object
    classnames: tuple = CLASSES
    domains: tuple = DOMAINS
    colours: tuple = COLOUR_NAMES
    templates: tuple = CLASS_TEMPLATES
    cell_templates: tuple = CELL_TEMPLATES
    colour_templates: tuple = COLOUR_TEMPLATES


def register() -> str:
    """Register the embedded config with open_clip (idempotent); returns the model name."""
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_PATH)
    return MODEL_NAME


def load_embedded(weights: str | Path | None = None, device: str = "cpu", precision: str = "fp32") -> Embedded:
    """The shipped model (or the same architecture with ``weights``), its preprocess and tokenizer,
    and the world's class names, domains, colours and templates. Works offline."""
    weights = Path(weights or WEIGHTS_PATH)
    if not weights.is_file():
        raise FileNotFoundError(f"embedded weights not found at {weights}; reinstall the package or run "
                                "`python scripts/train_embedded_clip.py` to train them")
    name = register()
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=str(weights), device=device, precision=precision)
    model.eval()
    return Embedded(model, preprocess, open_clip.get_tokenizer(name))
