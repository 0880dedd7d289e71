"""The depth audit: probes read a class on the unedited model; the default global edit is surface
only (zero-shot forgets, the raw-embedding probe still reads the class); metrics sit at chance when
the forgotten features carry no signal; k-NN and retrieval on synthetic features; the CLI's --audit."""
import json

import pytest
import torch

from lightning_unlearn import ForgetRequest, unlearned
from lightning_unlearn.audit import (AuditError, Features, audit, audit_features, compare, extract, resolve_layers,
                                     retrieval_precision, split_cells)
from lightning_unlearn.data import World, WorldDataset, write_world
from lightning_unlearn.embedded import load_embedded
from lightning_unlearn.encoders import encode_image, image_io
from lightning_unlearn.probes import knn_predict, probe_metrics

from test_cli import cli

N_PER_CELL = 4


def _batches(emb, split):
    ds = WorldDataset(World(split, N_PER_CELL), transform=emb.preprocess)
    return torch.utils.data.DataLoader(ds, batch_size=200)


@pytest.fixture(scope="module")
def star():
    """Audits of the embedded model before and after the default global edit of `star`."""
    emb = load_embedded()
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"])
    fit_b, test_b = _batches(emb, "val"), _batches(emb, "test")
    f0, t0 = extract(emb.model, fit_b), extract(emb.model, test_b)
    before = audit_features(emb.model, emb.tokenizer, request, f0, t0)
    with unlearned(emb.model, emb.tokenizer, request, progress=False):
        f1, t1 = extract(emb.model, fit_b), extract(emb.model, test_b)
        after = audit_features(emb.model, emb.tokenizer, request, f1, t1)
    return {"before": before, "after": after, "t0": t0, "t1": t1, "emb": emb, "test": test_b}


def test_the_probes_read_the_class_on_the_unedited_model(star):
    b = star["before"]
    assert b["n_forget_test"] == 4 * N_PER_CELL and b["n_test"] == 40 * N_PER_CELL
    assert b["probe_balanced_acc"] > 0.9 and b["probe_balanced_acc_normalised"] > 0.9
    assert b["probe_recall"] > 0.9 and b["probe_retain_acc"] > 0.9
    assert b["zeroshot_acc"] > 0.9 and b["paraphrase_acc"] > 0.8 and b["retrieval_precision"] > 0.8
    assert b["probe_balanced_acc@pooled"] > 0.9


def test_the_default_global_edit_forgets_on_the_surface_only(star):
    """Zero-shot and paraphrases forget, retrieval fails, but a linear probe on the raw embedding
    still reads the class: the edit is an invertible map of the joint space."""
    a = star["after"]
    assert a["zeroshot_acc"] <= 0.05 and a["paraphrase_acc_max"] <= 0.1 and a["retrieval_precision"] <= 0.2
    assert a["zeroshot_retain_acc"] > 0.9
    assert a["probe_balanced_acc"] > 0.9 and a["probe_recall"] > 0.9


def test_a_joint_space_edit_leaves_the_tower_features_untouched(star):
    t0, t1 = star["t0"], star["t1"]
    assert torch.equal(t0.layers["pooled"], t1.layers["pooled"]) and torch.equal(t0.layers["block:3"],
                                                                                  t1.layers["block:3"])
    assert not torch.allclose(t0.layers["output"], t1.layers["output"])
    assert star["before"]["probe_recall@pooled"] == star["after"]["probe_recall@pooled"]


def test_extract_output_is_encode_image(star):
    emb = star["emb"]
    x, cls, dom, _ = next(iter(star["test"]))
    feats = extract(emb.model, [(x[:16], cls[:16], dom[:16])], layers=("output", "block:-1"))
    assert set(feats.layers) == {"output", "block:5"}
    with torch.no_grad():
        torch.testing.assert_close(feats.layers["output"], emb.model.encode_image(x[:16]))


def test_a_transformers_model_is_audited_through_the_adapter_and_its_modes_restored(hf_clip):
    model, tok = hf_clip
    request = ForgetRequest(["cat", "dog", "bird"], ["photo", "sketch"], forget_classes=["dog"])
    size = image_io(model)[0]
    x = torch.rand(48, 3, size, size, generator=torch.Generator().manual_seed(0))
    cls, dom = torch.arange(48) % 3, torch.arange(48) // 3 % 2  # 8 images per (class, domain) cell
    fit, test = split_cells(cls, dom)
    model.train()
    model.text_model.eval()  # a user's mixed modes come back as they were
    try:
        result = audit(model, tok, request, [(x[fit], cls[fit], dom[fit])], [(x[test], cls[test], dom[test])],
                       colours=("red",), paraphrase_templates=("a picture of a {c}.",))
        assert model.training and model.vision_model.training and not model.text_model.training
        feats = extract(model, [(x[:8], cls[:8], dom[:8])], layers=("output", "pooled", "block:0"))
    finally:
        model.eval()
    with torch.no_grad():
        torch.testing.assert_close(feats.layers["output"], encode_image(model, x[:8]))
    assert feats.layers["block:0"].shape == (8, model.config.vision_config.hidden_size)
    assert {"probe_balanced_acc", "probe_recall@pooled", "knn_recall@block0", "zeroshot_acc", "paraphrase_acc",
            "retrieval_precision"} <= set(result)
    assert result["n_fit"] == result["n_test"] == 24 and result["n_forget_test"] == 8


def test_compare_gives_before_after_and_delta(star):
    c = compare(star["before"], star["after"])
    assert c["zeroshot_acc_delta"] == pytest.approx(c["zeroshot_acc_after"] - c["zeroshot_acc_before"])
    assert c["zeroshot_acc_delta"] < -0.8


def _synthetic(signal: float, seed: int, n_per_cell: int = 10, C: int = 5, D: int = 2, dim: int = 16):
    """Gaussian features with class means of norm ``signal`` (0: no class information)."""
    means = torch.randn(C, dim, generator=torch.Generator().manual_seed(0)) * signal  # shared by both splits
    g = torch.Generator().manual_seed(seed)
    cls = torch.arange(C).repeat_interleave(D * n_per_cell)
    dom = torch.arange(D).repeat_interleave(n_per_cell).repeat(C)
    x = means[cls] + torch.randn(len(cls), dim, generator=g)
    return Features({"output": x}, cls, dom)


FORGET = torch.zeros(5, 2, dtype=torch.bool)
FORGET[1] = True  # class 1, every domain


@pytest.mark.parametrize("seed", [0, 1])
def test_the_probes_are_at_chance_when_the_forgotten_features_carry_no_signal(seed):
    fit, test = _synthetic(0.0, seed), _synthetic(0.0, seed + 100)
    m = probe_metrics(fit.layers["output"], fit, test.layers["output"], test, FORGET, 5)
    assert abs(m["probe_balanced_acc"] - 0.5) <= 0.15
    assert m["probe_recall"] <= 0.5 and m["knn_recall"] <= 0.5  # chance 0.2 over 20 test images
    strong = _synthetic(4.0, seed), _synthetic(4.0, seed + 100)
    m = probe_metrics(strong[0].layers["output"], strong[0], strong[1].layers["output"], strong[1], FORGET, 5)
    assert m["probe_balanced_acc"] > 0.95 and m["probe_recall"] > 0.95 and m["knn_recall"] > 0.95


def test_an_eraser_that_replaces_the_forgotten_class_brings_the_probe_to_chance():
    """Forgotten images replaced by draws from the retained images' distribution (the ideal eraser):
    the binary probe cannot tell them apart, the multi-class probe never names the class."""
    fit, test = _synthetic(4.0, 0), _synthetic(4.0, 1)
    for f, seed in ((fit, 2), (test, 3)):
        g = torch.Generator().manual_seed(seed)
        forgotten = (f.cls == 1).nonzero().flatten()
        donors = (f.cls != 1).nonzero().flatten()
        f.layers["output"][forgotten] = f.layers["output"][donors[torch.randint(len(donors), (len(forgotten),),
                                                                                 generator=g)]]
    m = probe_metrics(fit.layers["output"], fit, test.layers["output"], test, FORGET, 5)
    assert abs(m["probe_balanced_acc"] - 0.5) <= 0.15
    assert m["probe_recall"] <= 0.1 and m["knn_recall"] <= 0.1
    assert m["probe_retain_acc"] > 0.9


def test_knn_votes_the_nearest_neighbours():
    memory = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    query = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    assert knn_predict(memory, labels, query, 2, k=2).tolist() == [0, 1]
    assert knn_predict(memory, labels, query, 2, k=5).tolist() == [1, 1]  # majority of all five


def test_retrieval_precision_counts_the_forgotten_images_among_the_top_k():
    request = ForgetRequest(["a", "b", "c"], ["x", "y"], forget_classes=["b"])
    T = torch.eye(3)  # class prompts: the axes
    cls = torch.tensor([0, 0, 1, 1, 1, 1, 2, 2])
    dom = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    test = Features({}, cls, dom)
    h = torch.eye(3)[cls] + 0.1
    assert retrieval_precision(None, None, request, h, test, ["a", "b", "c"], ["x", "y"], T) == 1.0
    h[[2, 3]] = torch.tensor([0.0, 0.0, 1.0])  # two of the four forgotten images now look like class c
    assert retrieval_precision(None, None, request, h, test, ["a", "b", "c"], ["x", "y"], T) == 0.5


def test_split_cells_halves_every_cell_deterministically():
    cls = torch.tensor([0, 0, 0, 1, 1, 0, 1, 1])
    dom = torch.tensor([0, 0, 1, 0, 0, 1, 1, 1])
    fit, test = split_cells(cls, dom)
    assert sorted(fit.tolist() + test.tolist()) == list(range(8)) and not set(fit.tolist()) & set(test.tolist())
    for c in (0, 1):
        for d in (0, 1):
            cell = (cls == c) & (dom == d)
            assert cell[fit].sum() == cell[test].sum() == 1
    assert torch.equal(split_cells(cls, dom)[0], fit)
    with pytest.raises(AuditError, match=r"\('b', 'y'\) has 1 image.*at least 2"):
        split_cells(torch.tensor([0, 0, 1]), torch.tensor([1, 1, 1]), ["a", "b"], ["x", "y"])


def test_bad_layers_and_splits_are_refused(star):
    emb = star["emb"]
    assert resolve_layers(emb.model, ("output", "block:mid", "block:3")) == ("output", "block:3")
    with pytest.raises(AuditError, match="has 6 blocks"):
        resolve_layers(emb.model, ("block:6",))
    with pytest.raises(AuditError, match="unknown layer 'logits'"):
        resolve_layers(emb.model, ("logits",))
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"])
    t0 = star["t0"]
    retained = t0.subset((t0.cls != emb.classnames.index("star")).nonzero().flatten())
    with pytest.raises(AuditError, match="images of both forgotten and retained"):
        audit_features(emb.model, emb.tokenizer, request, retained, t0)


def test_cli_evaluate_audit_on_a_folder(tmp_path, weights, capsys):  # noqa: F811
    data = write_world(World("test", n_per_cell=2), tmp_path / "world")
    code, out, err = cli(["evaluate", "--pretrained", weights, "--data", data, "--forget-classes", "star", "--audit",
                          "--json", tmp_path / "e.json", "--no-progress"], capsys)
    assert code == 0, err
    audit = json.loads((tmp_path / "e.json").read_text())["audit"]
    assert audit["n_fit"] == audit["n_test"] == 40 and audit["n_forget_test"] == 4
    assert audit["zeroshot_acc"] > 0.7 and audit["probe_balanced_acc"] >= 0.5  # unedited: the class is there
    assert "probe_balanced_acc@pooled" in audit and "depth audit" in out and "paraphrase_acc" in out

    thin = write_world(World("test", n_per_cell=1), tmp_path / "thin")
    code, _, err = cli(["evaluate", "--pretrained", weights, "--data", thin, "--forget-classes", "star", "--audit",
                        "--no-progress"], capsys)
    assert code == 2 and "at least 2 images per cell" in err
    code, _, err = cli(["evaluate", "--pretrained", weights, "--data", data, "--audit", "--no-progress"], capsys)
    assert code == 2 and "--audit needs the forgotten cells" in err
