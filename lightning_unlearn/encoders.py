"""One interface over the CLIP implementations the library edits: open_clip models and Hugging Face
``transformers`` ``CLIPModel`` / ``SiglipModel`` (optional extra ``[hf]``; nothing here imports
``transformers`` unless such a model is passed).

Everything that runs a tower goes through :func:`encode_image` / :func:`encode_text`, reads the
image input format from :func:`image_io` and finds the image tower with :func:`image_tower`;
:func:`eval_mode` runs a block in eval mode and gives every submodule its mode back.

Tokenizers: open_clip's (``open_clip.get_tokenizer(name)``) return a LongTensor of token ids. For a
``transformers`` model, pass any callable ``texts -> input_ids`` (a LongTensor [n, L]) or
``texts -> mapping`` with ``input_ids`` (and ``attention_mask``), e.g. :func:`hf_tokenizer` around
the model's own ``AutoTokenizer`` / ``AutoProcessor``.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def hf_kind(model: nn.Module) -> str | None:
    """"clip" for a transformers ``CLIPModel``, "siglip" for a ``SiglipModel``, else None."""
    if "transformers" not in sys.modules or not any(
            c.__module__.startswith("transformers.") for c in type(model).__mro__):
        return None  # not a transformers model: do not import its model classes
    from transformers import CLIPModel, SiglipModel
    if isinstance(model, CLIPModel):
        return "clip"
    if isinstance(model, SiglipModel):
        return "siglip"
    return None


def _features(out) -> torch.Tensor:
    """``get_*_features`` return a tensor (transformers 4.x) or an output with ``pooler_output`` (5.x)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def encode_image(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Unnormalised image embeddings of a batch of preprocessed images."""
    if hf_kind(model):
        return _features(model.get_image_features(pixel_values=images))
    return model.encode_image(images)


def encode_text(model: nn.Module, tokens) -> torch.Tensor:
    """Text embeddings of tokenizer output (a LongTensor of ids, or a mapping with ``input_ids``)."""
    if hf_kind(model):
        kwargs = dict(tokens) if isinstance(tokens, Mapping) else {"input_ids": tokens}
        kwargs = {k: v for k, v in kwargs.items() if k in ("input_ids", "attention_mask", "position_ids")}
        return _features(model.get_text_features(**kwargs))
    return model.encode_text(tokens)


def image_tower(model: nn.Module) -> nn.Module:
    """The image tower: ``model.visual`` (open_clip), ``model.vision_model`` (transformers)."""
    return model.vision_model if hf_kind(model) else model.visual


@contextmanager
def eval_mode(model: nn.Module):
    """The block with ``model`` in eval mode; every submodule's train / eval mode is restored after it,
    also on an error."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def image_io(model: nn.Module) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(image size, mean, std) the model's image tower expects."""
    kind = hf_kind(model)
    if kind:
        size = model.config.vision_config.image_size
        mean, std = (OPENAI_MEAN, OPENAI_STD) if kind == "clip" else ((0.5,) * 3, (0.5,) * 3)
    else:
        visual = model.visual
        size = getattr(visual, "image_size", 224)
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        mean, std = cfg.get("mean", OPENAI_MEAN), cfg.get("std", OPENAI_STD)
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    return size, torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


def hf_tokenizer(tokenizer, padding: str | bool = "max_length", max_length: int | None = None) -> Callable:
    """A library tokenizer (``texts -> {"input_ids", "attention_mask"}`` tensors) from a transformers
    tokenizer or processor. SigLIP was trained on text padded to ``max_length`` (its default,
    64): keep ``padding="max_length"``; CLIP accepts ``padding=True``."""
    def tokenize(texts: Sequence[str]):
        return tokenizer(text=list(texts), padding=padding, truncation=True, max_length=max_length,
                         return_tensors="pt")
    return tokenize


def tokenize(tokenizer: Callable, texts: Sequence[str], device) -> object:
    """``tokenizer(texts)`` on ``device`` (a tensor, or a mapping of tensors)."""
    return to_device(tokenizer(list(texts)), device)


def rows(tokens, i: int, j: int) -> object:
    """Rows ``i:j`` of tokenizer output (a tensor, or a mapping of tensors)."""
    if isinstance(tokens, Mapping):
        return {k: v[i:j] if isinstance(v, torch.Tensor) else v for k, v in tokens.items()}
    return tokens[i:j]


def to_device(tokens, device) -> object:
    """Tokenizer output (a tensor, or a mapping of tensors) on ``device``."""
    if isinstance(tokens, Mapping):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in tokens.items()}
    return tokens.to(device)
