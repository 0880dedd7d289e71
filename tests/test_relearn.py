"""The relearning attack: it brings back a class a global edit forgot (so the measurement cannot
silently pass), leaves the caller's model untouched, and starts at 0 steps on the unedited model."""
import pytest
import torch

from lightning_unlearn import ForgetRequest, edits, restore_, unlearn_
from lightning_unlearn.data import rendered_batches
from lightning_unlearn.embedded import load_embedded
from lightning_unlearn.relearn import ATTACKS, Attack, RelearnError, format_relearning, relearning_attack, summary

ATTACK = Attack("proj-lr1e-3-5img", lr=1e-3, images_per_cell=5, max_steps=10)


@pytest.fixture(scope="module")
def setup():
    emb = load_embedded()
    request = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"])
    return emb, request, rendered_batches("train", 5, emb.preprocess), rendered_batches("test", 5, emb.preprocess)


def test_the_attack_restores_a_forgotten_class_and_leaves_the_model_alone(setup):
    emb, request, train, test = setup
    unlearn_(emb.model, emb.tokenizer, request, method="text", progress=False)
    try:
        before = {k: v.clone() if torch.is_tensor(v) else v for k, v in emb.model.state_dict().items()}
        flags = [p.requires_grad for p in emb.model.parameters()]
        r = relearning_attack(emb.model, emb.tokenizer, request, train, test, attacks=[ATTACK])
        assert r["start_forget_acc"] <= 0.1 and r["start_retain_acc"] > 0.9  # the edit did forget
        a = r["attacks"][ATTACK.name]
        assert a["steps_to_target"] is not None and 1 <= a["steps_to_target"] <= ATTACK.max_steps
        assert a["forget_acc"][a["steps_to_target"]] >= 0.5 and len(a["forget_acc"]) == ATTACK.max_steps + 1
        assert a["images"] == 5 * 40
        after = emb.model.state_dict()
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) if torch.is_tensor(after[k])
                                                     else before[k] == after[k] for k in before)
        assert [p.requires_grad for p in emb.model.parameters()] == flags and edits(emb.model)
        assert summary(r)[f"relearn_steps@{ATTACK.name}"] == a["steps_to_target"]
        assert "steps" in format_relearning(r)
    finally:
        restore_(emb.model)


def test_the_unedited_model_starts_above_the_target(setup):
    emb, request, train, test = setup
    r = relearning_attack(emb.model, emb.tokenizer, request, train, test, attacks=[ATTACK])
    assert r["start_forget_acc"] >= 0.9 and r["attacks"][ATTACK.name]["steps_to_target"] == 0


def test_bad_settings_are_refused():
    with pytest.raises(RelearnError):
        Attack("x", cells="some")
    assert {a.name for a in ATTACKS} == {"proj-lr1e-3-5img", "proj-lr1e-4-5img"}


def test_cli_evaluate_audit_prints_the_relearning_attack(tmp_path, capsys):
    import json

    from lightning_unlearn.data import World, write_world
    from test_cli import cli
    data = write_world(World("test", n_per_cell=10), tmp_path / "world")
    code, out, err = cli(["unlearn", "--embedded", "--forget-classes", "star", "--method", "text", "-o", tmp_path / "m",
                          "--no-progress"], capsys)
    assert code == 0, err
    code, out, err = cli(["evaluate", "--model", f"local-dir:{tmp_path / 'm'}", "--data", data, "--forget-classes",
                          "star", "--audit", "--json", tmp_path / "e.json", "--no-progress"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "e.json").read_text())
    steps = report["audit"]["relearn_steps@proj-lr1e-3-5img"]
    assert report["audit"]["relearn_start_acc"] <= 0.1 and steps is not None and 1 <= steps <= 50
    assert report["relearning"]["model"]["attacks"]["proj-lr1e-3-5img"]["images"] == 5 * 40
    assert "relearning attack on the model" in out and "relearn_steps@proj-lr1e-4-5img" in out


def test_audit_dataset_reports_the_relearning_figures(setup):
    from lightning_unlearn.audit import audit_dataset
    from lightning_unlearn.data import World, WorldDataset
    emb, request, _, _ = setup
    ds = WorldDataset(World("test", 4), transform=emb.preprocess)
    out = audit_dataset(emb.model, emb.tokenizer, request, ds, layers=("output",), relearn=True)
    assert out["relearn_start_acc"] >= 0.9 and out["relearn_steps@proj-lr1e-3-5img"] == 0  # unedited: already there
    assert "probe_balanced_acc" in out
