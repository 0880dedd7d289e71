"""The deep mode: the output eraser's math, its round trips (inject == fold, restore, export, edit
artifact, Lightning checkpoint), evidence validation, and the depth it reaches on the embedded model
(one request per paradigm, on cached embeddings: see benchmarks/deep_sweep.py)."""
import copy
import warnings

import lightning as L
import open_clip
import pytest
import torch

from lightning_unlearn import ForgetRequest, edits, embedded, fold_, nullspace, restore_, unlearn_
from lightning_unlearn import deep
from lightning_unlearn.artifact import apply_edit_file_, load_edit, save_edit
from lightning_unlearn.edit import edit_modules
from lightning_unlearn.data import cell_images, render_split
from lightning_unlearn.export import save_folded
from lightning_unlearn.metrics import depth_metrics
from lightning_unlearn.module import CLIPUnlearning
from lightning_unlearn.zeroshot import classifier, encode_images

FAST_DEEP = dict(depth="deep", proto_steps=3, n_prototypes=1, class_templates=("a {c}.",), progress=False)


# --------------------------------------------------------------------------- the eraser's math


@pytest.mark.parametrize("whiten", [False, True])
def test_eraser_is_a_projection_that_equalises_the_class_means(whiten):
    g = torch.Generator().manual_seed(0)
    n, m = 12, 400
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    X0 = torch.randn(m, n, generator=g, dtype=torch.float64) @ A.T
    shift = torch.randn(n, 2, generator=g, dtype=torch.float64)
    X1 = X0[torch.randperm(m, generator=g)] + shift[:, 0] + 0.5 * shift[:, 1]  # the same cloud, shifted
    S = torch.cov(torch.cat([X0, X1]).T) if whiten else None
    E = nullspace.oblique_eraser(shift, S)
    torch.testing.assert_close(E @ E, E)
    torch.testing.assert_close(E @ shift, torch.zeros_like(shift))
    gap = (X1 @ E.T).mean(0) - (X0 @ E.T).mean(0)
    assert gap.norm() < 1e-9 * shift.norm(), "the class-conditional means must be equal after the eraser"
    assert torch.linalg.matrix_rank(torch.eye(n, dtype=E.dtype) - E) == 2
    if not whiten:
        torch.testing.assert_close(E, E.T)  # the orthogonal projector
    else:  # LEACE's choice changes the data less (in the Mahalanobis metric) than the orthogonal one
        def cost(M):
            D = torch.cat([X0, X1]) @ (torch.eye(n, dtype=M.dtype) - M).T
            return float((D @ torch.linalg.solve(S, D.T)).trace())
        assert cost(E) <= cost(nullspace.oblique_eraser(shift)) + 1e-9


def test_eraser_bad_input_and_empty_span():
    assert torch.equal(nullspace.oblique_eraser(torch.zeros(5, 0)), torch.eye(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="dimension 4, expected 5"):
        nullspace.oblique_eraser(torch.ones(5, 1), torch.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        nullspace.oblique_eraser(torch.full((5, 1), float("nan")))


def test_eraser_groups_by_class_or_by_domain_and_erases_raw_and_normalised_gaps():
    import torch.nn.functional as F
    classes, domains = ["a", "b", "c"], ["x", "y"]
    g = torch.Generator().manual_seed(1)
    H = {(c, d): (1 + 0.5 * (c == "a")) * (torch.randn(16, generator=g, dtype=torch.float64) + 0.3 * torch.randn(
        20, 16, generator=g, dtype=torch.float64)) for c in classes for d in domains}  # class a: a larger norm

    def gap(E, request, normalise=False):
        means = {c: (F.normalize(h @ E.T, dim=-1) if normalise else h @ E.T).mean(0) for c, h in H.items()}
        return deep.group_gaps(means, request)

    eye = torch.eye(16, dtype=torch.float64)
    for request, groups in [(ForgetRequest(classes, domains, forget_classes=["a", "b"]), 2),
                            (ForgetRequest(classes, domains, forget_domains=["x"]), 1)]:
        assert torch.linalg.matrix_rank(eye - deep.eraser(H, request)) == groups  # the raw gaps only
        E = deep.eraser(H, request, normalised=True)
        torch.testing.assert_close(E @ E, E)
        assert torch.linalg.matrix_rank(eye - E) == 2 * groups  # raw + normalised, per group
        raw = gap(eye, request)
        assert raw.shape[1] == groups and gap(E, request).norm() < 1e-9 * raw.norm()  # the raw means are equal
        normalised = gap(nullspace.oblique_eraser(raw), request, normalise=True)  # left by the raw direction alone
        assert normalised.norm() > 1e-3 and (E @ normalised).norm() < 1e-9 * normalised.norm()  # erased too
    # (what it buys on real embeddings, a normalised probe near chance, is asserted on the embedded
    # model below: test_the_eraser_is_harmless_and_reaches_chance_with_real_images_of_every_cell)


# --------------------------------------------------------------------------- round trips on the embedded model


@pytest.fixture(scope="module")
def deep_edited(emb):
    model = copy.deepcopy(emb.model)
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"])
    u = unlearn_(model, emb.tokenizer, request, **FAST_DEEP)
    return model, u


@pytest.fixture(scope="module")
def inputs(emb):
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 3, 32, 32, generator=g), emb.tokenizer(["a sketch of a star.", "a moon."])


def outs(model, inputs):
    with torch.no_grad():
        return model.eval().encode_image(inputs[0]), model.encode_text(inputs[1])


def test_deep_edit_is_the_surface_map_after_a_rank_one_eraser(emb, deep_edited):
    model, u = deep_edited
    (name, edit), = edit_modules(model)
    assert name == "visual.proj" and u.stats["image"]["eraser_rank"] == 1
    assert not u.stats["image"]["eraser_normalised"]  # data-free: the raw gap only
    M = edit.P.weight.double()
    assert torch.linalg.matrix_rank(M, rtol=1e-5) == M.shape[0] - 1  # the shallow map is full rank
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"])
    E, _ = deep.output_eraser(emb.model, emb.tokenizer, request, n_prototypes=1, proto_steps=3, proto_lr=0.05, seed=0,
                              class_templates=FAST_DEEP["class_templates"], progress=False)
    E = E.double()
    torch.testing.assert_close(E @ E, E, atol=1e-6, rtol=0)  # a projection ...
    torch.testing.assert_close(M @ E, M, atol=1e-4, rtol=0)  # ... applied first: M = M_surface E
    assert torch.linalg.matrix_rank(torch.eye(len(E), dtype=E.dtype) - E, rtol=1e-6) == 1
    assert edit.info["config"]["depth"] == "deep"


def test_deep_edit_folds_restores_and_exports(emb, deep_edited, inputs, tmp_path):
    model, u = deep_edited
    edited = outs(model, inputs)
    folded = copy.deepcopy(model)
    originals = fold_(folded)
    assert not edits(folded) and set(folded.state_dict()) == set(emb.model.state_dict())
    for a, b in zip(outs(folded, inputs), edited):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    folded.load_state_dict(originals, strict=False)
    for k, v in emb.model.state_dict().items():
        assert torch.equal(folded.state_dict()[k], v)

    out = save_folded(model, open_clip.get_model_config(embedded.register()), tmp_path / "folded")
    loaded, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    for a, b in zip(outs(loaded, inputs), edited):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)

    path = save_edit(model, tmp_path / "deep.safetensors")
    fresh = copy.deepcopy(emb.model)
    apply_edit_file_(fresh, load_edit(path))
    for a, b in zip(outs(fresh, inputs), edited):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    restore_(fresh)
    for k, v in emb.model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k

    restored = copy.deepcopy(model)
    restore_(restored)
    for k, v in emb.model.state_dict().items():
        assert torch.equal(restored.state_dict()[k], v), k


def test_deep_edit_survives_a_lightning_checkpoint(emb, inputs, tmp_path):
    module = CLIPUnlearning(model=copy.deepcopy(emb.model), arch=embedded.MODEL_NAME, forget_classes=["star"],
                            unlearn={k: v for k, v in FAST_DEEP.items() if k != "progress"})
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    module.compute_edit()
    trainer.strategy.connect(module)
    ckpt = tmp_path / "deep.ckpt"
    trainer.save_checkpoint(ckpt)
    reloaded = CLIPUnlearning.load_from_checkpoint(ckpt, weights_only=True)
    assert reloaded.computed
    for a, b in zip(outs(reloaded.clip, inputs), outs(module.clip, inputs)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    (_, edit), = edit_modules(reloaded.clip)
    assert edit.info["config"]["depth"] == "deep"


def test_evidence_is_validated(emb):
    model = copy.deepcopy(emb.model)
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"], forget_domains=["sketch"])
    good = torch.zeros(5, 3, 32, 32)
    with pytest.raises(ValueError, match="depth='deep'"):
        unlearn_(model, emb.tokenizer, request, evidence={("star", "sketch"): good}, progress=False)
    for key in [("dragon", "sketch"), ("star", "x-ray"), "star"]:
        with pytest.raises(ValueError, match=r"not a \(class, domain\) cell of this request's label space"):
            unlearn_(model, emb.tokenizer, request, evidence={key: good}, **FAST_DEEP)
    with pytest.raises(ValueError, match=r"\(N >= 1, 3, 32, 32\), got \(5, 3, 16, 16\)"):
        unlearn_(model, emb.tokenizer, request, evidence={("star", "sketch"): torch.zeros(5, 3, 16, 16)}, **FAST_DEEP)
    with pytest.raises(TypeError, match="must be a dict"):
        unlearn_(model, emb.tokenizer, request, evidence=[good], **FAST_DEEP)
    with pytest.raises(ValueError, match="site='joint'"):
        unlearn_(model, emb.tokenizer, request, depth="deep", site="pooled", progress=False)
    with pytest.raises(ValueError, match="`depth`='medium'"):
        unlearn_(model, emb.tokenizer, request, depth="medium", progress=False)
    assert not edits(model)


def test_whole_domains_are_refused_by_the_deep_mode(emb):
    from lightning_unlearn.callback import NullspaceUnlearning
    model = copy.deepcopy(emb.model)
    request = ForgetRequest(emb.classnames, emb.domains, forget_domains=["painting"])
    with pytest.raises(ValueError, match="cannot forget whole domains.*depth='shallow'"):
        unlearn_(model, emb.tokenizer, request, **FAST_DEEP)
    assert not edits(model)
    for make in [lambda: NullspaceUnlearning(request, depth="deep"),  # refused when built, before any Trainer
                 lambda: CLIPUnlearning(request=request, unlearn={"depth": "deep"})]:
        with pytest.raises(ValueError, match="cannot forget whole domains"):
            make()


# --------------------------------------------------------------------------- depth reached (cached embeddings)

REQUESTS = {"global": dict(forget_classes=["star"]),
            "domain-specific": dict(forget_classes=["star"], forget_domains=["sketch"]),
            "domain": dict(forget_domains=["painting"])}
# the depth targets (binary probe balanced accuracy, raw and normalised output); measured raw 0.464 / 0.514 /
# 0.462, normalised 0.497 / 0.547 / 0.480
LIMIT_EVERY_CELL = {"global": 0.60, "domain-specific": 0.65, "domain": 0.60}


@pytest.fixture(scope="module")
def depth(emb):
    """Embeddings of 10 val / 10 test images per cell, and the deep mode's cell embeddings: from
    prototypes (its data-free defaults), 5 train images per cell, and 80 train images of every cell
    (the ``evidence`` path of :func:`deep.cell_embeddings`)."""
    from lightning_unlearn import UnlearnConfig
    torch.manual_seed(0)
    D = {"v": render_split("val", 10, emb.preprocess), "t": render_split("test", 10, emb.preprocess),
         "train": render_split("train", 80, emb.preprocess),
         "T": classifier(emb.model, emb.tokenizer, emb.classnames, emb.templates).double(),
         "Tc": classifier(emb.model, emb.tokenizer, emb.colours, emb.colour_templates).double()}
    cfg = UnlearnConfig(depth="deep")
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"])
    kw = dict(n_prototypes=cfg.deep_prototypes, proto_steps=cfg.prototype_steps("eraser"), proto_lr=cfg.proto_lr,
              seed=cfg.seed, class_templates=cfg.class_templates, progress=False)
    proto, _ = deep.cell_embeddings(emb.model, emb.tokenizer, request, **kw)
    every, stats = deep.cell_embeddings(emb.model, emb.tokenizer, request, **kw,
                                   evidence=cell_images(*D["train"], request.forget_cells + request.retain_cells, 80))
    assert set(stats["evidence_images"].values()) == {80}
    H = {k: encode(emb.model, D[k][0]) for k in "vt"}
    five = {c: encode(emb.model, x) for c, x in cell_images(*D["train"], list(proto), 5).items()}
    return D, H, {"deep": proto, "every-cell": every, "five": five}


def encode(model, x) -> torch.Tensor:
    """Raw image embeddings in float64 (as benchmarks/deep_sweep.py encodes them)."""
    return encode_images(model, x, batch_size=400).double()


def run(emb, depth, paradigm, variant):
    D, H, means = depth
    request = ForgetRequest(emb.classnames, emb.domains, **REQUESTS[paradigm])
    m = {"deep": means["deep"], "every-cell": means["every-cell"],
         "evidence": means["deep"] | {c: means["five"][c] for c in request.forget_cells}}.get(variant)
    E = torch.eye(H["v"].shape[1], dtype=torch.float64) if variant == "none" else \
        deep.eraser(m, request, normalised=variant == "every-cell")
    return depth_metrics(H["v"] @ E.T, D["v"][1], H["t"] @ E.T, D["t"][1], request, D["T"], D["Tc"])


@pytest.mark.slow  # the depth fixture: a minute
def test_evidence_of_every_cell_adds_the_normalised_direction(emb, depth):
    D = depth[0]
    model = copy.deepcopy(emb.model)
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"])
    every = cell_images(*D["train"], request.forget_cells + request.retain_cells, 2)
    for evidence, normalised in [(every, True), (dict(list(every.items())[:-1]), False)]:  # one cell short
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            u = unlearn_(model, emb.tokenizer, request, evidence=evidence, **FAST_DEEP)
        # the depth/surface trade-off is announced (and how to get the surface back globally)
        assert any("towers=('image', 'text')" in str(w.message) for w in caught) is normalised
        assert u.stats["image"]["eraser_normalised"] is normalised
        assert u.stats["image"]["eraser_rank"] == (2 if normalised else 1)
        restore_(model)
    with pytest.raises(ValueError, match=r"\(N, d\) images"):  # means cannot give the normalised gap
        deep.eraser({c: h.mean(0) for c, h in depth[2]["deep"].items()}, request, normalised=True)


@pytest.mark.parametrize("paradigm", list(REQUESTS))
def test_the_eraser_is_harmless_and_reaches_chance_with_real_images_of_every_cell(emb, depth, paradigm):
    none = run(emb, depth, paradigm, "none")
    assert none["probe_bal_raw"] > 0.95  # the class is linearly readable before any edit
    for variant in ["deep", "evidence", "every-cell"]:
        r = run(emb, depth, paradigm, variant)
        assert 100 * (none["zs_retain"] - r["zs_retain"]) <= 1.0
        assert 100 * (none["colour"] - r["colour"]) <= 1.0
        assert 100 * (none["probe_retain_acc"] - r["probe_retain_acc"]) <= 2.0
    # 80 held-out real images of every cell: the probes, fitted after the edit, are near chance
    r = run(emb, depth, paradigm, "every-cell")
    assert r["probe_bal_raw"] <= LIMIT_EVERY_CELL[paradigm] and r["probe_bal_norm"] <= LIMIT_EVERY_CELL[paradigm]


@pytest.mark.slow  # the depth fixture: a minute
@pytest.mark.xfail(strict=True, reason="not reached: with prototypes for the retained cells the eraser misses the "
                                       "real class gap (README, 'Depth: deep mode')")
def test_global_probe_target_with_five_evidence_images(emb, depth):
    assert run(emb, depth, "global", "evidence")["probe_bal_raw"] <= 0.60


# --------------------------------------------------------------------------- evidence from folders: CLI, callback


@pytest.fixture(scope="module")
def evidence_dir(tmp_path_factory):
    """Two rendered train images of the forgotten cell (star, sketch) as <root>/sketch/star/*.png."""
    from lightning_unlearn.data.world import CLASSES, DOMAINS, World
    world = World("train", 3)
    root = tmp_path_factory.mktemp("evidence") / "ev"
    (root / "sketch" / "star").mkdir(parents=True)
    stars = [s for s in (world[i] for i in range(len(world)))
             if (CLASSES[s.cls], DOMAINS[s.domain]) == ("star", "sketch")][:2]
    for i, s in enumerate(stars):
        s.image.save(root / "sketch" / "star" / f"{i}.png")
    return root


def test_evidence_from_a_folder_is_the_preprocessed_images_of_its_cells(emb, evidence_dir, tmp_path):
    from PIL import Image
    from lightning_unlearn.data.datasets import evidence_from_folder
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"], forget_domains=["sketch"])
    ev = evidence_from_folder(evidence_dir, request, emb.preprocess)
    assert list(ev) == [("star", "sketch")] and ev["star", "sketch"].shape == (2, 3, 32, 32)
    with Image.open(evidence_dir / "sketch" / "star" / "0.png") as im:
        assert torch.equal(ev["star", "sketch"][0], emb.preprocess(im.convert("RGB")))
    import shutil
    more = shutil.copytree(evidence_dir, tmp_path / "more")
    for folder in ["photo/star", "x-ray/star"]:
        (more / folder).mkdir(parents=True)
        shutil.copy(more / "sketch" / "star" / "0.png", more / folder / "0.png")
    with pytest.raises(ValueError, match="outside this request's label space: x-ray/star"):
        evidence_from_folder(more, request, emb.preprocess)
    shutil.rmtree(more / "x-ray")
    ev = evidence_from_folder(more, request, emb.preprocess)  # a retained cell is evidence too (the rest's mean)
    assert sorted(ev) == [("star", "photo"), ("star", "sketch")] and ev["star", "photo"].shape == (1, 3, 32, 32)


def test_cli_deep_edit_with_evidence(evidence_dir, tmp_path, capsys):
    import json
    from test_cli import cli
    args = ["unlearn", "--forget-classes", "star", "--forget-domains", "sketch", "--no-progress"]
    code, _, err = cli(args + ["--evidence", evidence_dir, "-o", tmp_path / "shallow"], capsys)
    assert code == 2 and "--evidence" in err and "depth='deep'" in err and not (tmp_path / "shallow").exists()
    code, _, err = cli(args + ["--depth", "deep", "--evidence", evidence_dir, "-o", tmp_path / "deep",
                               "--json", tmp_path / "deep.json"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "deep.json").read_text())
    assert report["config"]["depth"] == "deep" and report["evidence"] == {"star|sketch": 2}
    info = json.loads((tmp_path / "deep" / "edit.json").read_text())
    assert "deep" in json.dumps(info)


def test_callback_and_module_refuse_evidence_without_the_deep_mode(emb):
    from lightning_unlearn.callback import NullspaceUnlearning
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"])
    ev = {("star", "photo"): torch.zeros(1, 3, 32, 32)}
    with pytest.raises(ValueError, match="deep mode only"):
        NullspaceUnlearning(request, evidence=ev)
    with pytest.raises(ValueError, match="deep mode only"):
        CLIPUnlearning(request=request, evidence=ev)
    assert NullspaceUnlearning(request, depth="deep", evidence=ev).evidence is ev
