"""The self-check on held-out prototypes (lightning_unlearn.selfcheck), the correction rounds, and the
worst-cell fields of every summary (demo and evaluate JSON, UnlearningAccuracy)."""
import json

import pytest
import torch

from lightning_unlearn import ForgetRequest, cache, restore_, unlearn_
from lightning_unlearn import correction, selfcheck
from lightning_unlearn.cli import main
from lightning_unlearn.data import World, write_world
from lightning_unlearn.directions import build_constraints, class_texts
from lightning_unlearn.edit import UnlearnConfig
from lightning_unlearn.load import load_clip
from lightning_unlearn.selfcheck import CheckThresholds, self_check
from lightning_unlearn.sites import find_site
from lightning_unlearn.zeroshot import worst_cells


@pytest.fixture(scope="module")
def emb():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # a cache of this module's own: the check sets are synthesised once and shared by the tests here
    with cache.use(cache.Cache()):
        yield load_clip("embedded")
    torch.set_num_threads(threads)


STAR = {"forget_classes": ["star"]}


def test_self_check_passes_a_good_edit_and_flags_alpha_zero(emb):
    request = ForgetRequest(emb.classnames, emb.domains, **STAR)
    good = unlearn_(emb.model, emb.tokenizer, request, progress=False, check=True)
    restore_(emb.model)
    assert good.check is not None and good.check.passed, good.check.summary()
    assert good.check.forget_acc_after == 0.0 and good.check.worst_retain_cell["drop_points"] <= 5.0
    assert good.check.seed == UnlearnConfig().seed + selfcheck.SEED_OFFSET  # never the edit's own seed
    counted = [c for c in good.check.cells if c["n"]]
    assert len(good.check.cells) == 40 and counted and all(0 < c["coverage"] <= 1 for c in counted)
    none = unlearn_(emb.model, emb.tokenizer, request, progress=False, check=True, alpha=0.0)
    restore_(emb.model)
    assert not none.check.passed and none.check.forget_acc_after == 1.0
    assert any("forgotten cell star" in f for f in none.check.failures)
    assert "FAIL" in none.check.summary() and "PASS" in good.check.summary()
    json.dumps(good.check.to_dict())  # plain JSON
    # thresholds the user sets: a check that allows nothing to stay forgotten-named fails the same map
    strict = self_check(emb.model, emb.tokenizer, request, good.maps, good.config,
                        thresholds=CheckThresholds(retain_drop_cell=-1.0))
    assert not strict.passed and any("retained cell" in f for f in strict.failures)


def test_self_check_flags_a_map_that_hurts_a_retained_class(emb):
    """A map that sends a retained class's direction towards another class (on top of the star edit):
    the check sees that class's cells misnamed and fails on the retained cells. The class is one the
    check covers (a cell whose held-out prototypes the unedited model names confidently)."""
    request = ForgetRequest(emb.classnames, emb.domains, **STAR)
    u = unlearn_(emb.model, emb.tokenizer, request, progress=False, check=True)
    restore_(emb.model)
    hurt, victim = _hurt(emb, u)
    check = self_check(emb.model, emb.tokenizer, request, {"image": hurt}, u.config)
    assert not check.passed and check.worst_retain_cell["drop_points"] > 5.0
    assert any("retained cell" in f for f in check.failures)
    hit = [c for c in check.cells if c["cell"][0] == victim and c["n"]]
    assert hit and min(c["acc_after"] for c in hit) < 1.0


def _hurt(emb, u):
    """``u``'s image map with a retained class the check covers sent towards another class."""
    victim = next(c["cell"][0] for c in u.check.cells if c["n"] and not c["forget"])
    other = next(c for c in emb.classnames if c not in (victim, "star"))
    T = class_texts(emb.model, emb.tokenizer, list(emb.classnames), UnlearnConfig().class_templates)
    v, o = T[emb.classnames.index(victim)], T[emb.classnames.index(other)]
    return (torch.eye(len(v)) + 3.0 * torch.outer(o - v, v)) @ u.maps["image"], victim


def test_correction_rounds_never_make_the_worst_retained_check_cell_worse(emb, monkeypatch):
    """Correction rounds on a map that hurts a retained class: its misnamed held-out prototypes become
    constraints, and the returned map is never worse on the last held-out set (none of whose prototypes
    it was solved with) than the map without corrections, on its worst retained cell; on the plain
    edit with thresholds nothing passes, rounds that find nothing wrong stop and keep the map."""
    request = ForgetRequest(emb.classnames, emb.domains, **STAR)
    u = unlearn_(emb.model, emb.tokenizer, request, progress=False, check=True)
    restore_(emb.model)
    hurt, _ = _hurt(emb, u)
    cfg = UnlearnConfig(rounds=2)
    t = build_constraints(emb.model, emb.tokenizer, request, find_site(emb.model, "image"), "joint", multimodal=True,
                          class_templates=cfg.class_templates, n_prototypes=cfg.n_prototypes,
                          proto_steps=cfg.prototype_steps("global"), proto_lr=cfg.proto_lr, seed=cfg.seed,
                          text_weight=cfg.text_weight, image_weight=cfg.image_weight, margin=cfg.margin,
                          sink_margin=cfg.sink_margin, retain_prompts=cfg.retain_prompts, progress=False)
    M, info = correction.correct(emb.model, emb.tokenizer, request, cfg, t, hurt.double(), lambda M2: M2, None, None)
    assert info["rounds_run"] >= 1 and info["constraints_added"] >= 1
    last = info["check"]
    assert last.seed == info["history"][-1]["seed"] > cfg.seed + selfcheck.SEED_OFFSET  # a fresh set
    reference = self_check(emb.model, emb.tokenizer, request, {"image": hurt}, cfg, seed=last.seed)
    assert last.worst_retain_cell["drop_points"] <= reference.worst_retain_cell["drop_points"] + 1e-9
    assert last.worst_retain_cell["drop_points"] < reference.worst_retain_cell["drop_points"]  # it corrected
    # through unlearn_: forced rounds on the good edit find nothing wrong, stop, and keep its map
    monkeypatch.setattr(correction, "CORRECTION_THRESHOLDS", CheckThresholds(retain_drop_cell=-1.0))
    fixed = unlearn_(emb.model, emb.tokenizer, request, progress=False, rounds=2)
    restore_(emb.model)
    assert fixed.stats["image"]["correction"]["constraints_added"] == 0
    assert torch.allclose(fixed.maps["image"], u.maps["image"]) and fixed.check is not None
    assert fixed.infos["image"]["config"]["rounds"] == 2  # the rounds are part of the edit's id


def test_rounds_need_the_two_sided_multimodal_edit():
    with pytest.raises(ValueError, match="rounds"):
        UnlearnConfig(solver="projector", rounds=1)
    with pytest.raises(ValueError, match="rounds"):
        UnlearnConfig(rounds=-1)
    assert "rounds" not in UnlearnConfig(solver="projector").acting_fields()


def test_worst_cells_names_the_cells():
    request = ForgetRequest(["a", "b"], ["x", "y"], forget_classes=["b"])
    total = torch.full((2, 2), 10)
    before = torch.tensor([[10, 9], [10, 10]])
    after = torch.tensor([[10, 6], [0, 3]])
    w = worst_cells(after, total, request, before=(before, total))
    assert w["worst_forget_cell"]["cell"] == ["b", "y"] and w["worst_forget_cell"]["acc"] == pytest.approx(0.3)
    assert w["worst_retain_cell"]["cell"] == ["a", "y"] and w["worst_retain_cell"]["drop_points"] == pytest.approx(30)
    mask = torch.tensor([[False, False], [True, True]])
    assert worst_cells(after, total, mask, ["a", "b"], ["x", "y"]) | {} == worst_cells(after, total, request) | {}
    assert worst_cells(after, total, request)["worst_retain_cell"]["cell"] == ["a", "y"]  # least accurate


def test_demo_and_evaluate_json_have_the_worst_cells(tmp_path, capsys):
    report = tmp_path / "demo.json"
    code = main(["demo", "--n-per-cell", "1", "--method", "text", "--no-progress", "--out",
                 str(tmp_path / "demo"), "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 0
    for p in json.loads(report.read_text())["paradigms"]:
        assert {"worst_forget_cell", "worst_retain_cell", "check"} <= set(p) and p["check"] is None
        assert {"cell", "acc", "acc_before", "drop_points"} <= set(p["worst_retain_cell"])
    assert "worst retained cell" in out
    data = write_world(World("test", n_per_cell=1), tmp_path / "world")
    ev = tmp_path / "eval.json"
    assert main(["evaluate", "--data", str(data), "--forget-classes", "star", "--no-progress", "--json", str(ev)]) == 0
    got = json.loads(ev.read_text())
    assert got["worst_forget_cell"]["cell"][0] == "star" and got["worst_retain_cell"]["cell"][0] != "star"
