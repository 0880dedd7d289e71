"""Which CLIP models the edit supports: every open_clip config, and the transformers classes.

    python benchmarks/coverage.py --json benchmarks/results/coverage.json
    python benchmarks/coverage.py --json /tmp/cov.json --models ViT-B-32 RN50   # a subset, for a smoke run

Measured: 739 s on 2 busy cores (most of it building the 144 architectures on the meta device);
``--resume`` continues an interrupted run.

Two checks, recorded per row:

* Every config of ``open_clip.list_models()`` is built on the meta device (real architecture, no
  memory; ``HF_HUB_OFFLINE=1``: a config whose text tower needs a Hugging Face
  download does not build offline and is listed with that reason). Per tower: the edit site found
  (or the reason there is none); ``edit``: an edit injected on both towers; ``restore``: state_dict
  keys and shapes equal the original's; ``fold``: folding leaves no injected module; ``export``: the
  folded weights have exactly the keys and shapes of the architecture open_clip builds from the
  exported config (the check ``save_folded`` runs before writing).
* Numbers need real weights: one small random-init instance per family (the tower kind a config
  maps to) runs the whole cycle in fp32 - injected vs folded outputs, restore bit-exact, the
  exported folder reloaded by open_clip / transformers alone, alpha = 0 unchanged.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import open_clip  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_unlearn import ForgetRequest, edits, embedded, fold_, inject_, restore_, unlearn_  # noqa: E402
from lightning_unlearn.encoders import encode_image, encode_text, image_io, tokenize  # noqa: E402
from lightning_unlearn.export import _check_against_config, save_folded, save_pretrained_folded  # noqa: E402
from lightning_unlearn.localdir import quiet_open_clip  # noqa: E402
from lightning_unlearn.sites import TOWERS, EditLinear, UnsupportedModelError, find_site, folded_config  # noqa: E402

_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}
_TIMM = {"timm_model_pretrained": False, "image_size": 160}
#: One small config per open_clip family (the kind of edit site its image tower has).
TINY = {
    "vit": {"embed_dim": 64, "text_cfg": _TEXT,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16}},
    "resnet": {"embed_dim": 64, "text_cfg": _TEXT,
               "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16}},
    "timm head.proj": {"embed_dim": 64, "text_cfg": _TEXT,
                       "vision_cfg": {**_TIMM, "timm_model_name": "test_vit", "timm_pool": "", "timm_proj": "linear"}},
    "timm head.mlp": {"embed_dim": 64, "text_cfg": _TEXT, "vision_cfg": {
        **_TIMM, "timm_model_name": "test_resnet", "timm_pool": "avg", "timm_proj": "mlp", "image_size": 32}},
    "timm trunk classifier": {"embed_dim": 64, "custom_text": True, "text_cfg": _TEXT, "vision_cfg": {
        **_TIMM, "timm_model_name": "test_vit", "timm_pool": "token", "timm_proj": None}},
    "timm no projection (new layer)": {"embed_dim": 96, "custom_text": True, "text_cfg": _TEXT, "vision_cfg": {
        **_TIMM, "timm_model_name": "test_vit3", "timm_pool": "map", "timm_proj": "none"}},
    "coca": {"embed_dim": 64, "custom_text": True,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16,
                            "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
             "text_cfg": dict(_TEXT, embed_cls=True, output_tokens=True),
             "multimodal_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1,
                                "attn_pooler_heads": 2}},
}
HF_CLASSES = ("CLIPModel", "SiglipModel")
REQUEST = ForgetRequest(["cat", "dog", "bird", "fish"], ["photo", "sketch"], forget_classes=["dog"],
                        templates=["a {d} of a {c}."])
FAST = dict(method="text", class_templates=("a {c}.",), progress=False)


def family(model: nn.Module, site) -> str:
    """The family name (a key of TINY) of an open_clip model, from its image edit site."""
    if type(model).__name__ == "CoCa":
        return "coca"
    visual = model.visual
    kind = type(visual).__name__
    if kind == "VisionTransformer":
        return "vit"
    if kind == "ModifiedResNet":
        return "resnet"
    if site.slot is not None:
        return "timm no projection (new layer)"
    if site.module is getattr(visual.head, "proj", None):
        return "timm head.proj"
    if site.module is getattr(getattr(visual.head, "mlp", None), "fc2", None):
        return "timm head.mlp"
    return "timm trunk classifier"


def shapes(model: nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def describe(site) -> str:
    if site.slot is not None:
        return f"new EditLinear({site.slot.dim}, {site.slot.dim}) at {type(site.slot.parent).__name__}.{site.slot.name}"
    return f"{type(site.module).__name__}.{site.weight} ({site.layout}, {'x'.join(map(str, site.dims))})"


def check_config(name: str) -> dict:
    """Meta-device structural check of one open_clip config."""
    row = {"model": name, "source": "open_clip"}
    t0 = time.perf_counter()
    try:
        with quiet_open_clip(), torch.device("meta"):
            model = open_clip.create_model(name, load_weights=False, device="meta")
    except Exception as e:  # noqa: BLE001 - report any build failure with its reason
        return row | {"builds": False, "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}",
                      "seconds": round(time.perf_counter() - t0, 2)}
    row |= {"builds": True, "class": type(model).__name__, "visual": type(model.visual).__name__}
    original = shapes(model)
    towers = []
    for tower in TOWERS:
        try:
            site = find_site(model, tower)
            row[f"{tower}_site"] = describe(site)
            towers.append(tower)
            if tower == "image":
                row["family"] = family(model, site)
        except UnsupportedModelError as e:
            row[f"{tower}_site"] = None
            row[f"{tower}_reason"] = str(e)
    row["editable_towers"] = towers
    for step in ("edit", "fold", "restore", "export"):
        row[step] = False
    try:
        for tower in towers:
            n = find_site(model, tower).dims[1]
            inject_(model, torch.eye(n, device="cpu"), tower)
        row["edit"] = len(edits(model)) >= len(towers) > 0
        folded = copy.deepcopy(model)
        fold_(folded)
        row["fold"] = not edits(folded) and not any(isinstance(m, EditLinear) for m in folded.modules())
        base = open_clip.get_model_config(name)
        cfg = folded_config(model, base)
        if cfg == base:  # exported with the config the model was built from: same keys and shapes needed
            row["export"] = shapes(folded) == original
        else:  # the config changed (a new projection layer): build what open_clip makes of it
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
                _check_against_config(folded.state_dict(), Path(d))
            row["export"] = True
            row["export_cfg"] = {k: v for k, v in cfg["vision_cfg"].items() if base["vision_cfg"].get(k) != v}
        restore_(model)
        row["restore"] = shapes(model) == original
    except Exception as e:  # noqa: BLE001
        row["reason"] = f"{type(e).__name__}: {str(e)[:200]}"
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def outputs(model, images, tokens):
    with torch.no_grad():
        return encode_image(model, images), encode_text(model, tokens)


def max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def changed(model, snap) -> list[str]:
    """Keys whose tensors differ from ``snap`` in any bit (NaN-safe), or are missing / new."""
    sd = model.state_dict()
    differ = [k for k in sd.keys() & snap.keys() if sd[k].dtype != snap[k].dtype or sd[k].shape != snap[k].shape
              or sd[k].detach().cpu().contiguous().numpy().tobytes() != snap[k].cpu().contiguous().numpy().tobytes()]
    return sorted(differ + list(sd.keys() ^ snap.keys()))


def hf_instance(name: str):
    """A small random-init transformers model and a word-level tokenizer built in memory."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from lightning_unlearn.encoders import hf_tokenizer
    words = ["[PAD]", "[UNK]", "[EOS]", "a", "of", "photo", "sketch", "cat", "dog", "bird", "fish"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A [EOS]", special_tokens=[("[EOS]", 2)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", model_max_length=16)
    text = dict(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=None, eos_token_id=2)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    if name == "CLIPModel":
        cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
        return transformers.CLIPModel(cfg).eval(), hf_tokenizer(tok, padding=True)
    cfg = transformers.SiglipConfig(text_config=text, vision_config=vision)
    return transformers.SiglipModel(cfg).eval(), hf_tokenizer(tok)


def check_instance(fam: str, model: nn.Module, tok, export, export_towers: tuple | None = None) -> dict:
    """The full numeric cycle on a small random-init instance (fp32). ``export(model, folder)``
    writes the folded model and reloads it without this library; ``export_towers``: the towers an
    exported folder can hold when not all (the others are tried and their refusal recorded)."""
    row = {"family": fam, "class": type(model).__name__}
    size, _, _ = image_io(model)
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    tokens = tokenize(tok, ["a photo of a dog", "a sketch of a cat"], "cpu")
    snap = {k: v.detach().clone() for k, v in model.state_dict().items()}
    before = outputs(model, images, tokens)
    towers = tuple(t for t in TOWERS if _editable(model, t))
    unlearn_(model, tok, REQUEST, towers=towers, **FAST)
    injected = outputs(model, images, tokens)
    folded = copy.deepcopy(model)
    fold_(folded)
    row |= {"towers": list(towers), "edit_changes_outputs": max_diff(injected, before),
            "injected_vs_folded": max_diff(outputs(folded, images, tokens), injected)}
    with tempfile.TemporaryDirectory() as d:
        if export_towers:  # the full edit must be refused, leaving nothing behind
            try:
                export(model, Path(d) / "refused")
                row["export_refused"] = None
            except Exception as e:  # noqa: BLE001
                row["export_refused"] = f"{type(e).__name__}: {e}"
            restore_(model)
            unlearn_(model, tok, REQUEST, towers=export_towers, **FAST)
            injected = outputs(model, images, tokens)
        row["export_towers"] = list(export_towers or towers)
        reloaded = export(model, Path(d) / "out")
        row["export_reload_vs_injected"] = max_diff(outputs(reloaded, images, tokens), injected)
    restore_(model)
    row["restore_changed"] = changed(model, snap)
    unlearn_(model, tok, REQUEST, towers=towers, alpha=0.0, **FAST)
    row["alpha0_vs_original"] = max_diff(outputs(model, images, tokens), before)
    restore_(model)
    row["restore_changed"] += changed(model, snap)
    row["restore_bit_exact"] = not row["restore_changed"]
    row["ok"] = bool(row["injected_vs_folded"] <= 1e-5 and row["restore_bit_exact"]
                     and row["alpha0_vs_original"] <= 1e-6 and row["export_reload_vs_injected"] <= 1e-5)
    return row


def _editable(model, tower) -> bool:
    try:
        find_site(model, tower)
        return True
    except UnsupportedModelError:
        return False


def check_families(tmp: Path) -> list[dict]:
    rows = []
    for fam, cfg in TINY.items():
        name = "coverage-" + "".join(c if c.isalnum() else "-" for c in fam)
        (tmp / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(tmp / f"{name}.json")
        torch.manual_seed(0)
        with quiet_open_clip():
            model = open_clip.create_model(name).eval()

        def export(m, out, name=name):
            save_folded(m, open_clip.get_model_config(name), out)
            with quiet_open_clip():
                return open_clip.create_model(f"local-dir:{out}").eval()
        rows.append(check_instance(fam, model, open_clip.get_tokenizer(name), export))
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        return rows + [{"family": c, "class": c, "ok": False, "reason": f"transformers not installed: {e}"}
                       for c in HF_CLASSES]
    for cls in HF_CLASSES:
        model, tok = hf_instance(cls)

        def export(m, out):
            save_pretrained_folded(m, out)
            return type(m).from_pretrained(str(out)).eval()
        # SiglipModel has no vision projection: its folded image edit cannot be held by the stock class
        rows.append(check_instance(cls, model, tok, export, ("text",) if cls == "SiglipModel" else None))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--models", nargs="*", help="open_clip configs to check (default: all)")
    ap.add_argument("--resume", action="store_true", help="reuse the rows of an interrupted run (JSON path + .partial.jsonl)")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    embedded.register()
    t0 = time.perf_counter()
    names = args.models or [m for m in open_clip.list_models() if not m.startswith(("lu-", "coverage-", "world-"))]
    partial = Path(args.json).with_suffix(".partial.jsonl")  # one row per line: a rerun skips the done ones
    done = {}
    if args.resume and partial.exists():
        done = {r["model"]: r for r in map(json.loads, partial.read_text().splitlines())}
    configs = []
    for name in names:
        configs.append(done.get(name) or check_config(name))
        r = configs[-1]
        if name not in done:
            with partial.open("a") as f:
                f.write(json.dumps(r) + "\n")
        print(f"{name:34s} {'builds' if r['builds'] else 'no build'} "
              f"{r.get('family', '')!s:32s} edit={r.get('edit')} fold={r.get('fold')} restore={r.get('restore')} "
              f"export={r.get('export')} {r.get('reason', '')[:80]}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        families = check_families(Path(d))
    summary = summarise(configs, families)
    print_tables(summary, families)
    out = {"configs": configs, "families": families, "summary": summary,
           "versions": versions(), "seconds": round(time.perf_counter() - t0, 1)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    partial.unlink(missing_ok=True)
    return 0


def versions() -> dict:
    import timm
    v = {"open_clip": open_clip.__version__, "timm": timm.__version__, "torch": torch.__version__}
    try:
        import transformers
        v["transformers"] = transformers.__version__
    except ImportError:
        v["transformers"] = None
    return v


def summarise(configs: list[dict], families: list[dict]) -> dict:
    built = [r for r in configs if r["builds"]]
    full = [r for r in built if all(r.get(s) for s in ("edit", "fold", "restore", "export"))]
    by_family = {}
    for r in built:
        f = by_family.setdefault(r.get("family", "unsupported"), {"configs": 0, "ok": 0, "text_tower": 0})
        f["configs"] += 1
        f["ok"] += r in full
        f["text_tower"] += "text" in r["editable_towers"]
    return {"configs": len(configs), "built": len(built), "editable": len(full),
            "not_built": {r["model"]: r["reason"] for r in configs if not r["builds"]},
            "not_editable": {r["model"]: r.get("reason") for r in built if r not in full},
            "image_only": {r["model"]: r.get("text_reason") for r in built if "text" not in r["editable_towers"]},
            "by_family": by_family, "families_ok": sum(bool(f.get("ok")) for f in families),
            "families": len(families)}


def print_tables(s: dict, families: list[dict]) -> None:
    print(f"\nopen_clip configs: {s['configs']}, build here: {s['built']}, edit+fold+restore+export: {s['editable']}")
    print("\n| family | configs | edit/fold/restore/export ok | text tower editable |\n|---|---|---|---|")
    for fam, f in sorted(s["by_family"].items()):
        print(f"| {fam} | {f['configs']} | {f['ok']} | {f['text_tower']} |")
    print("\n| small instance | towers | injected vs folded | restore bit-exact | export reload vs injected "
          "(towers) | alpha=0 vs original |\n|---|---|---|---|---|---|")
    for r in families:
        if "towers" not in r:
            print(f"| {r['family']} | - | - | - | {r.get('reason')} | - |")
            continue
        reload = r["export_reload_vs_injected"]
        print(f"| {r['family']} | {'+'.join(r['towers'])} | {r['injected_vs_folded']:.1e} | "
              f"{'yes' if r['restore_bit_exact'] else 'NO'} | "
              f"{'-' if reload is None else f'{reload:.1e}'} ({'+'.join(r.get('export_towers', []))}) | "
              f"{r['alpha0_vs_original']:.1e} |")
    for name, reason in {**s["not_built"], **s["not_editable"]}.items():
        print(f"  {name}: {reason}")


if __name__ == "__main__":
    raise SystemExit(main())
