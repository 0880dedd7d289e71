"""Fixtures shared by the test files: the embedded model, a stable copy of its weights, tiny
random-init transformers models, and tiny random-init open_clip architectures (registered once per
session, built once, handed back restored). The ``slow`` marker (pyproject.toml) marks tests that
take half a minute or more: ``pytest -m "not slow"`` leaves them out."""
import copy
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from lightning_unlearn import edits, embedded, prototypes, restore_
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


# --------------------------------------------------------------------------- tiny open_clip architectures

_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}
_COCA = {"embed_dim": 64, "custom_text": True,
         "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16,
                        "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
         "text_cfg": dict(_TEXT, embed_cls=True, output_tokens=True),
         "multimodal_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1,
                            "attn_pooler_heads": 2}}
#: Tiny configs for the tower types no built-in small config covers (the edit engine's zoo).
ARCH_CONFIGS = {
    # a timm ViT image tower (token pool) with a linear projection head
    "lu-test-timm-vit": {"embed_dim": 64, "text_cfg": _TEXT, "vision_cfg": {
        "timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "linear",
        "image_size": 160}},
    # a timm CNN image tower with an MLP projection head that has a bias
    "lu-test-timm-mlp": {"embed_dim": 64, "text_cfg": _TEXT, "vision_cfg": {
        "timm_model_name": "test_resnet", "timm_model_pretrained": False, "timm_pool": "avg", "timm_proj": "mlp",
        "timm_proj_bias": True, "image_size": 32}},
    # CustomTextCLIP (model.text is a TextTransformer) whose text projection is a Linear with a bias
    "lu-test-custom-text": {"embed_dim": 64, "custom_text": True, "text_cfg": dict(_TEXT, proj_bias=True),
                            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32,
                                           "patch_size": 8}},
    "lu-test-coca": _COCA,
}
#: The other CLIP families: towers with no projection, a classifier as projection, CoCa.
FAMILY_CONFIGS = {
    # timm ViT with attention-pool ("map") and proj="none": SigLIP / SigLIP2 / PE-Core style, no projection
    "lu-fam-noproj": {"embed_dim": 96, "custom_text": True, "text_cfg": _TEXT, "vision_cfg": {
        "timm_model_name": "test_vit3", "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none",
        "image_size": 160}},
    # timm ViT with proj=None: the trunk's own classifier (a Linear with a bias) is the projection (EVA02 style)
    "lu-fam-classifier": {"embed_dim": 64, "custom_text": True, "text_cfg": _TEXT, "vision_cfg": {
        "timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "token", "timm_proj": None,
        "image_size": 160}},
    "lu-fam-coca": _COCA,
}
#: The zoo: architecture -> create_model keyword arguments (ViT-B-32 and RN50 at 64 px for speed).
ARCHS = {"world-clip": {}, "ViT-B-32": {"force_image_size": 64}, "RN50": {"force_image_size": 64},
         "lu-test-timm-vit": {}, "lu-test-timm-mlp": {}, "lu-test-custom-text": {}}
BIG = ["ViT-B-32", "RN50"]


@pytest.fixture(scope="session")
def registered(tmp_path_factory):
    """Registers ARCH_CONFIGS, FAMILY_CONFIGS and the embedded world-clip with open_clip, once per session."""
    folder = tmp_path_factory.mktemp("configs")
    for name, cfg in {**ARCH_CONFIGS, **FAMILY_CONFIGS}.items():
        if name not in open_clip.list_models():
            path = folder / f"{name}.json"
            path.write_text(json.dumps(cfg))
            open_clip.add_model_config(path)
    embedded.register()
    return True


def snapshot(model: nn.Module) -> dict:
    """A detached copy of ``model.state_dict()``."""
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # every bit, NaN-safe, any dtype


def assert_bit_identical(model: nn.Module, snap: dict) -> None:
    """``model``'s state_dict has the keys, dtypes and bits of ``snap``."""
    sd = model.state_dict()
    assert set(sd) == set(snap), f"keys differ: {sorted(set(sd) ^ set(snap))}"
    bad = [k for k in sd if sd[k].dtype != snap[k].dtype or not torch.equal(_bits(sd[k]), _bits(snap[k]))]
    assert not bad, f"changed tensors: {bad}"


@dataclass
class Zoo:
    """One architecture of the zoo, with a fixed input batch."""
    name: str
    model: nn.Module
    tokenizer: object
    snapshot: dict  # state_dict at creation
    images: torch.Tensor  # a normalised input batch
    tokens: torch.Tensor

    def outputs(self):
        dtype = next(self.model.parameters()).dtype
        with torch.no_grad():
            return self.model.encode_image(self.images.to(dtype)), self.model.encode_text(self.tokens)


_ZOO = {}


def cached(name: str) -> Zoo:
    """The zoo's ``name`` (random init, seed 0), built once per session."""
    if name not in _ZOO:
        torch.manual_seed(0)
        model = open_clip.create_model(name, **ARCHS[name]).eval()
        size, _, _ = prototypes.model_io(model)
        tok = open_clip.get_tokenizer(name)
        images = prototypes.normalise_images(model, torch.rand(3, 3, size, size,
                                                               generator=torch.Generator().manual_seed(1)))
        _ZOO[name] = Zoo(name, model, tok, snapshot(model), images, tok(["a photo of a dog.", "a sketch of a cat."]))
    return _ZOO[name]


@pytest.fixture
def zoo(registered, request):
    """The cached model of ``request.param``, handed back restored to its creation snapshot."""
    z = cached(request.param)
    assert not edits(z.model)
    yield z
    restore_(z.model)
    z.model.float().eval()  # before reloading: an fp32 snapshot copied into fp16 weights would be rounded
    z.model.load_state_dict(z.snapshot)  # also undoes a fold_


@pytest.fixture(scope="module")
def loader():
    """The rendered test world in batches (tests/lightning_helpers.py); test_cli.py has its own."""
    from lightning_helpers import world_loader
    return world_loader()


@pytest.fixture
def counter(monkeypatch):
    """The requests of every edit the Lightning layer computes during the test."""
    from lightning_helpers import count_edits
    return count_edits(monkeypatch)


@pytest.fixture(scope="module")
def base(weights):
    """The embedded model loaded from the snapshot weights (edit-file and export tests)."""
    return embedded.load_embedded(weights)


@pytest.fixture(scope="module")
def edited(base):
    """A copy of ``base``'s model with a text-only global edit (tests/export_helpers.py FORGET), and its result."""
    from export_helpers import FORGET

    from lightning_unlearn import ForgetRequest, unlearn_
    model = copy.deepcopy(base.model)
    request = ForgetRequest(base.classnames, base.domains, **FORGET)
    result = unlearn_(model, base.tokenizer, request, method="text", progress=False)
    return model.eval(), result


@pytest.fixture(scope="module")
def inputs(base):
    """Fixed random images and three prompts."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 3, 32, 32, generator=g), base.tokenizer(["a sketch of a star.", "a star.", "a moon."])
