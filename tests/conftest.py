"""Fixtures shared by the test files: the embedded model, a stable copy of its weights, and tiny
random-init transformers models. The ``slow`` marker (pyproject.toml) marks tests that take half a
minute or more: ``pytest -m "not slow"`` leaves them out."""
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lightning_unlearn import embedded
from lightning_unlearn.encoders import hf_tokenizer

#: The label space the tiny models are tested on, and the words their in-memory tokenizer knows.
CLASSES, DOMAINS = ["cat", "dog", "bird", "fish"], ["photo", "sketch"]
WORDS = ["a", "of", "the", "photo", "sketch", *CLASSES, "red", "blue", "green", "colour", "thing", "picture"]


def snapshot_weights(folder: Path) -> Path:
    """A stable copy of the shipped weights (a training run may rewrite them while tests run). A
    missing or unreadable asset fails the tests: they are about the shipped model."""
    dst = folder / "world-clip.safetensors"
    assert embedded.WEIGHTS_PATH.is_file(), f"the shipped weights {embedded.WEIGHTS_PATH} are missing"
    for _ in range(10):
        try:
            shutil.copyfile(embedded.WEIGHTS_PATH, dst)
            load_file(str(dst))
            return dst
        except Exception:  # noqa: BLE001 - caught mid-write: try again
            time.sleep(1)
    raise AssertionError(f"the shipped weights {embedded.WEIGHTS_PATH} cannot be read")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A snapshot of the shipped embedded weights, once per test module."""
    return snapshot_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def emb():
    """The embedded model (:func:`~lightning_unlearn.embedded.load_embedded`), once per test module."""
    return embedded.load_embedded()


def hf_tiny(name: str):
    """A random-init transformers model ("hf-clip": ``CLIPModel``, "hf-siglip": ``SiglipModel``) in
    eval mode and its tokenizer (a word-level fast tokenizer built in memory); skips the test without
    transformers."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A [EOS]", special_tokens=[("[EOS]", 2)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                               model_max_length=16)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=None,
                eos_token_id=2)
    vision = dict(hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    if name == "hf-clip":
        model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                               projection_dim=24))
        return model.eval(), hf_tokenizer(tok, padding=True)
    vision["hidden_size"] = text["hidden_size"]  # SigLIP: both towers end at the joint width
    model = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
    return model.eval(), hf_tokenizer(tok)


@pytest.fixture(scope="module")
def hf_clip():
    """(a tiny random-init transformers ``CLIPModel``, its tokenizer), once per test module."""
    return hf_tiny("hf-clip")
