"""Bad inputs tried as a new user would: each ends in a clear error or in correct behaviour, never in
lost files or an edit that lands silently. One test per row of the README's "Bad inputs" table."""
import copy
import os
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_unlearn import EditError, ForgetRequest, RequestError, edit, edits, inject_, restore_, unlearn_
from lightning_unlearn.data import DomainFolderDataset
from lightning_unlearn.data.datasets import to_rgb
from lightning_unlearn.prompts import fill_template, validate_templates

ROOT = Path(__file__).resolve().parents[1]


# ---- requests and templates -----------------------------------------------------------------------

@pytest.mark.parametrize("names", [["dog", " dog"], ["dog", "Dog"], ["café", unicodedata.normalize("NFD", "café")],
                                   ["dog", "DOG\t"]])
def test_names_the_tokenizer_cannot_tell_apart_are_refused(names):
    with pytest.raises(RequestError, match=r"duplicate names.*case.*whitespace.*Unicode"):
        ForgetRequest(names + ["cat"], ["photo", "sketch"], forget_classes=["cat"])


def test_names_are_normalised_and_forget_names_match_case_insensitively():
    nfd = unicodedata.normalize("NFD", "café")
    r = ForgetRequest([" Dog", nfd, "cat "], ["photo", "sketch"], forget_classes=["dog", "CAFÉ"], forget_domains=["Sketch"])
    assert r.classnames == ("Dog", "café", "cat") and unicodedata.is_normalized("NFC", r.classnames[1])
    assert r.forget_classes == ("Dog", "café") and r.forget_domains == ("sketch",)
    assert r.forget_cells == (("Dog", "sketch"), ("café", "sketch"))
    with pytest.raises(RequestError, match="'dgo' is not in `classnames`; did you mean"):
        ForgetRequest(["dog", "cat"], ["photo"], forget_classes=["dgo"])


def test_a_request_of_8000_classes_builds_in_linear_time():
    classes = [f"class {i}" for i in range(8000)]
    t0 = time.perf_counter()
    r = ForgetRequest(classes, ["photo", "sketch"], forget_classes=classes[::2], forget_domains=["sketch"])
    seconds = time.perf_counter() - t0
    assert len(r.forget_cells) == 4000 and len(r.retain_cells) == 12000
    assert seconds < 0.5, f"{seconds:.2f} s for 8000 classes (was 3-5 s when quadratic)"


@pytest.mark.parametrize("template", ["a {c:{d}}.", "a {c!r}.", "a {d:>10} of {c}", "a {c"])
def test_templates_with_format_specs_fail_at_validation(template):
    with pytest.raises(ValueError, match=r"template .* (format spec|not a valid format string)"):
        ForgetRequest(["dog", "cat"], ["photo", "sketch"], forget_classes=["dog"], templates=[template])


def test_literal_braces_fill_correctly():
    assert fill_template("{{}} {c}", c="a") == "{} a"
    assert fill_template("{{c}} {} in a {d}", c="dog", d="sketch") == "{c} dog in a sketch"
    assert validate_templates(["{{}} {c}"]) == ("{{}} {c}",)


# ---- edits ----------------------------------------------------------------------------------------

def test_text_method_on_whole_domains_is_refused_with_what_to_use(emb):
    r = ForgetRequest(emb.classnames, emb.domains, forget_domains=["sketch"])
    with pytest.raises(ValueError, match=r"method='text'.*whole domains.*method='multimodal'"):
        unlearn_(emb.model, emb.tokenizer, r, method="text", progress=False)
    assert not edits(emb.model)


def test_an_edit_that_comes_out_as_the_identity_is_not_injected(emb, monkeypatch):
    from lightning_unlearn import edit
    n = emb.model.visual.proj.shape[1]
    monkeypatch.setattr(edit, "compute_map", lambda *a, **k: (torch.eye(n), n, {}))
    r = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"])
    with pytest.raises(EditError, match=r"is the identity .*forget nothing"):
        unlearn_(emb.model, emb.tokenizer, r, alpha=0.01, progress=False)
    assert not edits(emb.model)


def test_nan_in_the_backbone_is_refused_before_any_work(emb):
    model = copy.deepcopy(emb.model)
    with torch.no_grad():
        model.visual.transformer.resblocks[1].attn.in_proj_weight[3, 5] = float("inf")
    r = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"])
    t0 = time.perf_counter()
    with pytest.raises(EditError, match=r"`visual\.transformer\.resblocks\.1\.attn\.in_proj_weight` has 1 NaN or inf"):
        unlearn_(model, emb.tokenizer, r, progress=False)
    assert time.perf_counter() - t0 < 1.0 and not edits(model)


def test_the_weights_check_reads_every_value_and_accepts_sums_that_overflow(emb):
    r = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"])
    model = copy.deepcopy(emb.model)
    edit.check_model(model)
    with torch.no_grad():  # finite values whose float32 sum overflows: not refused
        model.visual.transformer.resblocks[0].mlp.c_fc.weight.fill_(3e38)
    edit.check_model(model)
    model = copy.deepcopy(emb.model)
    edit.check_model(model)
    model.visual.transformer.resblocks[0].mlp.c_fc.weight.data[7, 11] = float("nan")  # no version bump
    with pytest.raises(EditError, match=r"`visual\.transformer\.resblocks\.0\.mlp\.c_fc\.weight` has 1 NaN"):
        unlearn_(model, emb.tokenizer, r, progress=False)


def test_a_model_on_the_meta_device_is_refused(emb):
    model = copy.deepcopy(emb.model).to("meta")
    r = ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"])
    with pytest.raises(EditError, match=r"meta device.*load them first"):
        unlearn_(model, emb.tokenizer, r, progress=False)


def test_inject_leaves_the_global_rng_state_alone(emb):
    state = torch.get_rng_state()
    inject_(emb.model, torch.eye(emb.model.visual.proj.shape[1]))
    try:
        assert torch.equal(torch.get_rng_state(), state)
    finally:
        restore_(emb.model)


@pytest.mark.slow  # two processes
def test_every_rank_fails_with_rank_0s_message(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_failure.py"), str(tmp_path), "0"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    r0, r1 = ((tmp_path / f"rank{r}.txt").read_text() for r in (0, 1))
    assert r0.startswith("EditError: the model's weight `visual.proj` has 1 NaN")
    assert r1.startswith("EditError: computing the edit failed on another rank (this is rank 1): EditError: the "
                         "model's weight `visual.proj` has 1 NaN")
    assert "edits left: 0" in r1  # the rank that succeeded took its edit out again


@pytest.mark.slow  # two processes each
@pytest.mark.parametrize("failing", [0, 1])
def test_a_rank_failing_in_the_shared_synthesis_fails_every_rank(tmp_path, failing):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_failure.py"), str(tmp_path), str(failing),
                          "synthesis"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    own, other = ((tmp_path / f"rank{r}.txt").read_text() for r in (failing, 1 - failing))
    assert own.startswith("RuntimeError: synthesis failed on purpose")
    assert other.startswith(f"EditError: computing the edit failed on another rank (this is rank {1 - failing}): "
                            + ("RuntimeError: synthesis failed on purpose" if failing == 0 else
                               "rank 0 did not fail, see the failing rank's log"))
    assert "edits left: 0" in own and "edits left: 0" in other


# ---- data path ------------------------------------------------------------------------------------

def test_16_bit_png_is_scaled_not_white(tmp_path):
    a = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(a).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
        rgb = np.asarray(to_rgb(im)).astype(float)
    assert rgb.shape == (32, 32, 3)
    assert np.abs(rgb[..., 0] - a / 257).max() <= 1.0  # 16 -> 8 bit, not clipped to 255


def test_transparent_pixels_are_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[:2, :, 3], rgba[2:, :, 3] = 255, 255, 128  # red: opaque top, half transparent bottom
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as im:
        rgb = np.asarray(to_rgb(im))
    assert (rgb[0, 0] == [255, 0, 0]).all() and (rgb[3, 3] == [255, 127, 127]).all()


def _folder_with_a_truncated_jpeg(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / "photo" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "photo" / c / f"{i}.jpg")
    bad = root / "photo" / "dog" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:300])
    return bad


def test_a_truncated_jpeg_is_skipped_and_counted(tmp_path):
    bad = _folder_with_a_truncated_jpeg(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image"):
        ds = DomainFolderDataset(tmp_path)
    assert ds.skipped == [bad] and len(ds) == 3 and ds.support["photo"] == {"cat": 2, "dog": 1}
    unchecked = DomainFolderDataset(tmp_path, verify=False)
    with pytest.raises(OSError, match=r"(?i)cannot read image .*1\.jpg.*truncated"):
        unchecked[unchecked.samples.index((bad, 1, 0))]


# ---- files: nothing of the user's is lost -----------------------------------------------------------

def _write(out, overwrite=False, **kw):
    from lightning_unlearn.staging import staged_dir
    with staged_dir(out, overwrite, **kw) as tmp:
        (tmp / "weights.bin").write_bytes(b"new weights")
    return out


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_downloaded_model_folder_is_never_replaced(tmp_path):
    from lightning_unlearn.staging import OutputError
    hub = tmp_path / "ViT-B-32"
    hub.mkdir()
    files = {"open_clip_config.json": "{}", "open_clip_model.safetensors": "weights", "README.md": "card",
             "tokenizer.json": "{}"}
    for name, text in files.items():
        (hub / name).write_text(text)
    with pytest.raises(OutputError, match=r"refusing to replace .*not a folder written by lightning_unlearn"):
        _write(hub, overwrite=True)
    assert {p.name: p.read_text() for p in hub.iterdir()} == files
    assert (_write(tmp_path / "ours") / "weights.bin").read_bytes() == b"new weights"
    _write(tmp_path / "ours", overwrite=True)  # a folder this library wrote (marked) is replaced


def test_output_into_the_input_model_folder_is_refused(tmp_path):
    from lightning_unlearn.staging import OutputError
    model_dir = _write(tmp_path / "o2")
    for out in (model_dir, tmp_path, model_dir / "sub"):
        with pytest.raises(OutputError, match=r"is \(or contains, or lies inside\) the input"):
            _write(out, overwrite=True, inputs=[model_dir])
    assert (model_dir / "weights.bin").read_bytes() == b"new weights"


def test_a_symlink_is_never_replaced(tmp_path):
    from lightning_unlearn.staging import OutputError, write_json
    target = _write(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    with pytest.raises(OutputError, match=r"symbolic link \(to .*real\)"):
        _write(link, overwrite=True)
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "report-link.json").symlink_to(tmp_path / "report.json")
    with pytest.raises(OutputError, match="symbolic link"):
        write_json({"a": 1}, tmp_path / "report-link.json", overwrite=True)
    assert link.is_symlink() and (link / "weights.bin").is_file() and (tmp_path / "report.json").read_text() == "{}"


def test_a_killed_write_leaves_a_partial_that_the_next_write_cleans(tmp_path):
    code = ("import os, signal, sys; from lightning_unlearn.staging import staged_dir\n"
            "with staged_dir(sys.argv[1]) as tmp:\n"
            "    (tmp / 'weights.bin').write_bytes(b'half'); os.kill(os.getpid(), signal.SIGKILL)\n")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == -9
    partials = [p.name for p in tmp_path.iterdir()]
    assert len(partials) == 1 and partials[0].startswith(".out.") and partials[0].endswith(".partial")
    live = tmp_path / f".out.{os.getpid()}.abcd1234.partial"  # a write in progress: left alone
    foreign = tmp_path / f".out.{_dead_pid()}.abcd1234.partial"  # ours by name, but unmarked and not empty
    for p in (live, foreign):
        p.mkdir()
        (p / "x").write_text("x")
    (live / ".lightning_unlearn").write_text("{}")
    _write(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, foreign.name, "out"])


def test_a_write_killed_between_the_renames_gets_its_previous_output_back(tmp_path):
    from lightning_unlearn.staging import clean_stale
    old = tmp_path / f".out.{_dead_pid()}.abcd1234.old"  # what a kill between the two renames leaves
    _write(old)
    assert clean_stale(tmp_path / "out") == [old]
    assert (tmp_path / "out" / "weights.bin").read_bytes() == b"new weights" and not old.exists()


@pytest.mark.parametrize("exchange", [True, False])
def test_replacing_flushes_before_renaming_and_leaves_nothing_behind(tmp_path, monkeypatch, exchange):
    from lightning_unlearn import staging
    out = _write(tmp_path / "out")
    events = []
    fsync, rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or fsync(fd))
    monkeypatch.setattr(os, "rename", lambda a, b: events.append(("rename", str(a))) or rename(a, b))
    if not exchange:
        monkeypatch.setattr(staging, "_exchange", lambda a, b: False)
    else:
        real = staging._exchange
        monkeypatch.setattr(staging, "_exchange", lambda a, b: events.append(("rename", str(a))) or real(a, b))
    with staging.staged_dir(out, overwrite=True) as tmp:
        (tmp / "weights.bin").write_bytes(b"v2")
    moved = [i for i, e in enumerate(events) if e == ("rename", str(tmp))][0]
    synced = {Path(p).name for kind, p in events[:moved] if kind == "fsync"}
    assert {"weights.bin", ".lightning_unlearn", tmp.name} <= synced
    assert (out / "weights.bin").read_bytes() == b"v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_second_rename_puts_the_previous_output_back(tmp_path, monkeypatch):
    from lightning_unlearn import staging
    out = _write(tmp_path / "out")
    monkeypatch.setattr(staging, "_exchange", lambda a, b: False)
    rename = os.rename

    def fail_into_out(a, b):
        if Path(b) == out and str(a).endswith(".partial"):
            raise OSError("disk gone")
        rename(a, b)
    monkeypatch.setattr(os, "rename", fail_into_out)
    with pytest.raises(OSError, match="previous output is back in place"):
        with staging.staged_dir(out, overwrite=True) as tmp:
            (tmp / "weights.bin").write_bytes(b"v2")
    monkeypatch.setattr(os, "rename", rename)
    assert (out / "weights.bin").read_bytes() == b"new weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_weights_and_json_get_the_same_umask_modes(tmp_path, umask):
    from safetensors.torch import save_file
    from lightning_unlearn.staging import staged_dir, write_json
    previous = os.umask(umask)
    try:
        with staged_dir(tmp_path / "m") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "open_clip_model.safetensors"))  # safetensors makes 0600
            write_json({"a": 1}, tmp / "open_clip_config.json")
        write_json({"a": 1}, tmp_path / "report.json")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "m", *(tmp_path / "m").iterdir(),
                                                        tmp_path / "report.json"]}
    assert modes == {"m": 0o777 & ~umask, ".lightning_unlearn": 0o666 & ~umask,
                     "open_clip_model.safetensors": 0o666 & ~umask, "open_clip_config.json": 0o666 & ~umask,
                     "report.json": 0o666 & ~umask}


def test_write_json_refuses_to_overwrite_unless_asked(tmp_path):
    from lightning_unlearn.staging import write_json
    path = tmp_path / "eval.json"
    path.write_text('{"kept": true}')
    with pytest.raises(FileExistsError, match=r"eval\.json already exists.*overwrite"):
        write_json({"new": 1}, path)
    assert path.read_text() == '{"kept": true}'
    write_json({"new": 1}, path, overwrite=True)
    assert '"new": 1' in path.read_text()


# ---- edit artifacts: an edit never lands where it should not ----------------------------------------

@pytest.fixture(scope="module")
def artifacts(emb, tmp_path_factory):
    """Edit A (forget star in photos), and B (forget moon in photos) computed on top of A (both bound to
    the image features they were computed on), saved alone and as a chain."""
    from lightning_unlearn.artifact import save_edit
    folder = tmp_path_factory.mktemp("edits")
    model = copy.deepcopy(emb.model)
    kw = dict(method="text", progress=False)
    a = unlearn_(model, emb.tokenizer, ForgetRequest(emb.classnames, emb.domains, forget_classes=["star"],
                                                     forget_domains=["photo"]), **kw)
    save_edit(a, folder / "a.safetensors", model=model)
    b = unlearn_(model, emb.tokenizer, ForgetRequest(emb.classnames, emb.domains, forget_classes=["moon"],
                                                     forget_domains=["photo"]), compose=True, **kw)
    save_edit(b, folder / "b-alone.safetensors", model=model)
    save_edit(model, folder / "a-then-b.safetensors")
    return folder, model


def _rewrite(src: Path, dst: Path, change, change_maps=None, consistent: bool = True) -> Path:
    """A copy of an edit file with its metadata (and maps) changed; ``consistent``: with the content
    digest recomputed, as a file written that way would carry."""
    import json
    from safetensors import safe_open
    from safetensors.torch import save_file
    from lightning_unlearn.artifact import FORMAT, content_digest
    with safe_open(str(src), framework="pt") as f:
        meta, tensors = json.loads(f.metadata()[FORMAT]), {k: f.get_tensor(k) for k in f.keys()}
    change(meta)
    if change_maps is not None:
        tensors = {k: change_maps(v) for k, v in tensors.items()}
    if consistent:
        meta["content"] = content_digest(meta, [tensors[f"maps.{i}"] for i in range(len(tensors))])
    save_file(tensors, str(dst), metadata={FORMAT: json.dumps(meta)})
    return dst


@pytest.mark.parametrize("damage", ["empty", "no backbone", "no projection", "empty digest"])
def test_an_edit_with_an_empty_or_partial_fingerprint_is_refused(emb, artifacts, tmp_path, damage):
    from lightning_unlearn.artifact import ArtifactError, apply_edit_file_
    fp = lambda m: m["fingerprint"]["tensors"]  # noqa: E731
    change = {"empty": lambda m: fp(m).clear(), "no backbone": lambda m: fp(m).pop("backbone"),
              "no projection": lambda m: fp(m).pop("visual.proj"),
              "empty digest": lambda m: fp(m)["visual.proj"].update(sha256={})}[damage]
    path = _rewrite(artifacts[0] / "a.safetensors", tmp_path / "damaged.safetensors", change)
    model = copy.deepcopy(emb.model)
    with pytest.raises(ArtifactError, match=r"has no weights digest for .*refused.*check=False"):
        apply_edit_file_(model, path)
    assert not edits(model)


def test_the_same_edit_applied_twice_is_refused(emb, artifacts):
    from lightning_unlearn.artifact import apply_edit_file_
    model = copy.deepcopy(emb.model)
    apply_edit_file_(model, artifacts[0] / "a.safetensors")
    with pytest.raises(EditError, match=r"already applied to this model.*remove_edit"):
        apply_edit_file_(model, artifacts[0] / "a.safetensors", compose=True)
    assert len(edits(model)) == 1


def test_an_edit_computed_on_top_of_another_needs_its_predecessor(emb, artifacts):
    from lightning_unlearn.artifact import apply_edit_file_
    folder, edited = artifacts
    model = copy.deepcopy(emb.model)
    with pytest.raises(EditError, match=r"computed on top of 1 other edit.*carries none.*Apply them first"):
        apply_edit_file_(model, folder / "b-alone.safetensors")
    assert not edits(model)
    apply_edit_file_(model, folder / "a.safetensors")
    apply_edit_file_(model, folder / "b-alone.safetensors", compose=True)  # in order: fine
    chained = copy.deepcopy(emb.model)
    apply_edit_file_(chained, folder / "a-then-b.safetensors")  # the whole chain: fine
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = edited.encode_image(x)
        torch.testing.assert_close(model.encode_image(x), want, rtol=0, atol=1e-6)
        torch.testing.assert_close(chained.encode_image(x), want, rtol=0, atol=1e-6)


def _relabel(meta):  # forget "moon" instead of "star", in every place the metadata names the request
    for r in [meta["request"]] + [e["info"]["request"] for e in meta["edits"]]:
        r["forget_classes"] = ["moon"]


@pytest.mark.parametrize("tamper", ["request", "identity maps", "one value"])
def test_an_edit_file_altered_after_saving_is_refused(emb, artifacts, tmp_path, tamper):
    from lightning_unlearn.artifact import ArtifactError, apply_edit_file_
    change, maps = {"request": (_relabel, None), "identity maps": (lambda m: None, lambda t: torch.eye(t.shape[0])),
                    "one value": (lambda m: None, lambda t: t + torch.eye(t.shape[0]) * 1e-3)}[tamper]
    path = _rewrite(artifacts[0] / "a.safetensors", tmp_path / "altered.safetensors", change, maps, consistent=False)
    model = copy.deepcopy(emb.model)
    with pytest.raises(ArtifactError, match=r"altered after it was saved: its maps or metadata do not match"):
        apply_edit_file_(model, path)
    assert not edits(model)


def test_the_same_map_under_another_label_is_still_a_duplicate(emb, artifacts, tmp_path):
    from lightning_unlearn.artifact import apply_edit_file_
    relabelled = _rewrite(artifacts[0] / "a.safetensors", tmp_path / "relabelled.safetensors", _relabel)
    model = copy.deepcopy(emb.model)
    apply_edit_file_(model, relabelled)  # a consistent file: read as what it says
    with pytest.raises(EditError, match=r"already applied to this model \(its map.*same map twice"):
        apply_edit_file_(model, artifacts[0] / "a.safetensors", compose=True)
    assert len(edits(model)) == 1


def test_a_map_that_does_not_match_its_recorded_digest_is_refused(emb, artifacts, tmp_path):
    from lightning_unlearn.artifact import ArtifactError, apply_edit_file_
    def swap(meta):  # the maps of another edit under this file's per-edit digests
        meta["edits"][0]["info"]["map"] = "0" * 32
    path = _rewrite(artifacts[0] / "a.safetensors", tmp_path / "swapped.safetensors", swap)
    with pytest.raises(ArtifactError, match=r"damaged: edit 0's map does not match the digest"):
        apply_edit_file_(copy.deepcopy(emb.model), path)


@pytest.mark.parametrize("where", ["visual.transformer.resblocks.0.mlp.c_fc.weight", "token_embedding.weight",
                                   "visual.ln_post.bias"])
def test_a_fine_tuned_backbone_is_detected(emb, artifacts, where):
    from lightning_unlearn.artifact import WeightsMismatchError, apply_edit_file_
    model = copy.deepcopy(emb.model)
    with torch.no_grad():
        model.get_parameter(where).view(-1)[0] += 1e-4  # one small step on one weight
    with pytest.raises(WeightsMismatchError, match=r"backbone\) has different values.*fine-tuned"):
        apply_edit_file_(model, artifacts[0] / "a.safetensors")
    assert not edits(model)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_same_weights_in_lower_precision_are_the_same_weights(emb, artifacts, dtype, caplog):
    from lightning_unlearn.artifact import WeightsMismatchError, apply_edit_file_
    model = copy.deepcopy(emb.model).to(dtype)
    with caplog.at_level("WARNING"):
        apply_edit_file_(model, artifacts[0] / "a.safetensors")
    assert len(edits(model)) == 1
    assert f"same weights, different precision (edit computed in float32, model in {str(dtype)[6:]})" in caplog.text
    other = copy.deepcopy(emb.model)
    with torch.no_grad():
        other.visual.conv1.weight.mul_(1.01)  # a change larger than the rounding: still refused in low precision
    with pytest.raises(WeightsMismatchError, match="backbone"):
        apply_edit_file_(other.to(dtype), artifacts[0] / "a.safetensors")
