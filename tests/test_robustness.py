"""An edited model is never left behind an exception; damaged or shared prototype banks; input hygiene
(byte-order marks, evidence folders, interrupts). Each test is one row of the README's "Bad inputs" table."""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading

import open_clip
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from lightning_unlearn import ForgetRequest, cache, edit, edits, embedded, restore_, unlearn_
from lightning_unlearn.cache import PrototypeBank
from lightning_unlearn.data.datasets import default_transform, evidence_from_folder
from lightning_unlearn.data.world import CLASSES, DOMAINS, World
from lightning_unlearn.request import read_names

FAST = dict(class_templates=("a {c}.",), progress=False, n_prototypes=2, proto_steps=4)
REQUEST = ForgetRequest(["cat", "dog", "bird", "fish"], ["photo", "sketch"], forget_classes=["dog"],
                        forget_domains=["photo"])


@pytest.fixture(scope="module")
def tiny():
    embedded.register()
    torch.manual_seed(0)
    return open_clip.create_model(embedded.MODEL_NAME).eval(), open_clip.get_tokenizer(embedded.MODEL_NAME)


def _state(model):
    return {k: v.clone() if torch.is_tensor(v) else v for k, v in model.state_dict().items()}  # edits: extra state


def _same(model, before):
    after = model.state_dict()
    return after.keys() == before.keys() and all(
        torch.equal(after[k], v) if torch.is_tensor(v) else after[k] == v for k, v in before.items())


# ---- an edited model behind an exception --------------------------------------------------------------

def test_a_cache_directory_that_is_a_file_is_refused_when_made(tmp_path):
    f = tmp_path / "banks"
    f.write_text("mine")
    for directory in (f, f / "sub"):
        with pytest.raises(NotADirectoryError, match=rf"cache directory '{re.escape(str(directory))}' cannot be "
                                                     rf"created: '{re.escape(str(f))}' is a file; give a folder"):
            cache.Cache(directory)
    assert f.read_text() == "mine"


@pytest.mark.parametrize("fails", [False, True])
def test_a_bank_that_cannot_be_saved_warns_and_the_edit_stands(tiny, tmp_path, fails):
    model, tok = tiny
    folder = tmp_path / "banks"
    with pytest.warns(UserWarning, match=rf"cannot write the prototype bank '{re.escape(str(folder))}/[0-9a-f]{{32}}"
                                         r"\.safetensors'.*writable folder.*What the block computed is kept"):
        with pytest.raises(RuntimeError, match="the block's own error") if fails else contextlib.nullcontext():
            with cache.use(cache.Cache(folder)):
                u = unlearn_(model, tok, REQUEST, **FAST)
                folder.write_text("the folder became a file")  # the bank cannot be written any more
                if fails:
                    raise RuntimeError("the block's own error")  # not hidden by the bank's
    assert edits(model) == [u.name] and u.maps["image"].shape == (128, 128)  # the edit and its record
    restore_(model)


# ---- multi-tower injection: all or nothing -------------------------------------------------------------

@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
@pytest.mark.parametrize("earlier", [False, True])
def test_a_two_tower_edit_is_injected_whole_or_not_at_all(tiny, monkeypatch, error, earlier):
    model, tok = tiny
    monkeypatch.setattr(edit, "compute_map", lambda model, tok, request, site, *args, **kwargs:
                        (torch.eye(site.dims[1]) * 0.5, 1, {}))  # any map: the injection is what is tested
    if earlier:
        first = unlearn_(model, tok, REQUEST, **FAST).name
    before, inject = _state(model), edit.inject_

    def second_tower_fails(model, M, tower, *args, **kwargs):
        if tower == "text":
            raise error("stopped between the towers")
        return inject(model, M, tower, *args, **kwargs)
    monkeypatch.setattr(edit, "inject_", second_tower_fails)
    with pytest.raises(error, match="stopped between the towers"):
        unlearn_(model, tok, REQUEST, towers=("image", "text"), compose=earlier, **FAST)
    assert edits(model) == ([first] if earlier else []) and _same(model, before)
    monkeypatch.setattr(edit, "inject_", inject)
    retry = unlearn_(model, tok, REQUEST, towers=("image", "text"), compose=earlier, **FAST)  # a retry works
    assert sorted(edits(model)) == sorted([first, retry.name] if earlier else [retry.name])
    restore_(model)


# ---- damaged or shared prototype banks -------------------------------------------------------------------

def _bank(path, n=3, weights="w"):
    bank = PrototypeBank(weights, path)
    for i in range(n):
        bank.put(f"k{i}", torch.randn(2, 6))
    bank.save()
    return bank


def _rewrite(path, tensors=None, **meta):
    """The bank at ``path`` with its metadata (changed by ``meta``) over other ``tensors``."""
    with safe_open(str(path), framework="pt") as f:
        old, header = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file(tensors(old) if tensors else old, str(path), metadata=header | meta)


DAMAGES = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "random bytes": lambda p: p.write_bytes(os.urandom(4096)),
    "empty": lambda p: p.write_bytes(b""),
    "a folder": lambda p: (p.unlink(), p.mkdir()),
    "wrong-shape tensors": lambda p: _rewrite(p, lambda t: {k: torch.randn(3, 5) for k in t}),
    "NaN tensors": lambda p: _rewrite(p, lambda t: {k: torch.full_like(v, float("nan")) for k, v in t.items()}),
    "random tensors": lambda p: _rewrite(p, lambda t: {k: torch.randn_like(v) for k, v in t.items()}),
    "an entry less": lambda p: _rewrite(p, lambda t: dict(list(t.items())[1:])),
    "no checksums": lambda p: _rewrite(p, format="prototype-bank-1", checksums="{}"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_bank_is_refused_naming_the_file_and_the_fix(tmp_path, damage):
    path = tmp_path / "w.safetensors"
    _bank(path)
    DAMAGES[damage](path)
    with pytest.raises(ValueError, match=rf"prototype bank '{re.escape(str(path))}' .*; delete or move the file"):
        PrototypeBank.load(path, "w")


def test_a_damaged_bank_fails_the_edit_before_it_is_injected(tiny, tmp_path):
    model, tok = tiny
    path = tmp_path / f"{cache.weights_key(model)}.safetensors"
    path.write_bytes(os.urandom(100))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}' cannot be read .*damaged.*delete or move"):
        with cache.use(cache.Cache(tmp_path)):
            unlearn_(model, tok, REQUEST, **FAST)
    assert not edits(model) and path.stat().st_size == 100  # not edited, the file left as it was


def test_bank_entries_of_other_shapes_or_values_are_refused_on_use(tiny, tmp_path):
    model, tok = tiny
    with cache.use(cache.Cache(tmp_path)):
        unlearn_(model, tok, REQUEST, **FAST)
        restore_(model)
    path = next(tmp_path.iterdir())
    bank = PrototypeBank.load(path, cache.weights_key(model))
    for k in bank.entries:  # written through the bank: checksums that match, shapes that do not
        bank.put(k, torch.zeros(2, 7))
    bank.save()
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}' has an entry of shape \(2, 7\) where \(2, 130\) "
                                         "was expected.*delete or move"):
        with cache.use(cache.Cache(tmp_path)):
            unlearn_(model, tok, REQUEST, **FAST)
    assert not edits(model)
    mem = PrototypeBank("w")
    mem.put("k", torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(ValueError, match=r"in-memory prototype bank has an entry with 1 NaN or inf values; clear it"):
        mem.get("k")


def test_two_writers_of_one_bank_keep_every_entry(tmp_path):
    path = tmp_path / "w.safetensors"
    a, b = PrototypeBank.load(path, "w"), PrototypeBank.load(path, "w")  # both read it before either wrote
    for i in range(4):
        a.put(f"a{i}", torch.randn(2, 6))
        b.put(f"b{i}", torch.randn(2, 6))
    a.save()
    b.save()
    on_disk = PrototypeBank.load(path, "w").entries
    assert sorted(on_disk) == [f"{w}{i}" for w in "ab" for i in range(4)]
    assert all(torch.equal(on_disk[k], v) for k, v in (a.entries | b.entries).items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no lock or temporary file left


def test_saving_a_bank_waits_for_the_lock(tmp_path):
    bank = PrototypeBank("w", tmp_path / "w.safetensors")
    bank.put("k", torch.randn(2, 6))
    with cache._locked(tmp_path):  # another writer holds the folder
        writer = threading.Thread(target=bank.save)
        writer.start()
        writer.join(0.5)
        assert writer.is_alive() and not bank.path.exists()
    writer.join(10)
    assert not writer.is_alive() and sorted(PrototypeBank.load(bank.path, "w").entries) == ["k"]


# ---- input hygiene ------------------------------------------------------------------------------------

def test_names_files_with_a_byte_order_mark(tmp_path):
    (f := tmp_path / "names.txt").write_text("circle\nstar\n", encoding="utf-8-sig")
    assert f.read_bytes().startswith(b"\xef\xbb\xbf") and read_names(f"@{f}", "--classnames") == ("circle", "star")
    (g := tmp_path / "forget.txt").write_text("Star\n", encoding="utf-8-sig")
    r = ForgetRequest(read_names(f"@{f}", "--classnames"), ["photo"], read_names(f"@{g}", "--forget-classes"))
    assert r.classnames == ("circle", "star") and r.forget_classes == ("star",)


def _evidence_folder(root, cells):
    """``root/<domain>/<class>/0.png`` (a rendered image) for each (domain folder, class folder)."""
    image = World("train", 1)[0].image
    for d, c in cells:
        (root / d / c).mkdir(parents=True)
        image.save(root / d / c / "0.png")
    return root


def test_evidence_folders_match_names_case_insensitively_and_report_what_they_skip(tmp_path):
    request = ForgetRequest(CLASSES, DOMAINS, forget_classes=["star"])
    root = _evidence_folder(tmp_path / "ev", [("Photo", "Star"), ("sketch", "star")])
    (root / "sketch" / "star" / "1.png").write_bytes(b"not an image")
    (root / "sketch" / "heart").mkdir()
    with pytest.warns(UserWarning, match=rf"evidence folder {re.escape(str(root))}: skipped 1 unreadable image "
                                         rf"file\(s\) \(first: {re.escape(str(root / 'sketch/star/1.png'))}\); 1 "
                                         rf"class folder\(s\) with no readable image \(first: "
                                         rf"{re.escape(str(root / 'sketch/heart'))}\)"):
        ev = evidence_from_folder(root, request, default_transform())
    assert sorted(ev) == [("star", "photo"), ("star", "sketch")] and len(ev["star", "sketch"]) == 1


@pytest.mark.parametrize("cells", [[("photo", "Star"), ("photo", "star")], [("Photo", "star"), ("photo", "star")]])
def test_evidence_folders_differing_only_in_case_are_refused(tmp_path, cells):
    root = _evidence_folder(tmp_path / "ev", cells)
    (d1, c1), (d2, c2) = cells
    with pytest.raises(ValueError, match=rf"evidence folders {re.escape(str(root / d1 / c1 if d1 == d2 else root / d1))}"
                                         rf" and {re.escape(str(root / d2 / c2 if d1 == d2 else root / d2))} differ "
                                         "only in case.*merge them"):
        evidence_from_folder(root, ForgetRequest(CLASSES, DOMAINS, forget_classes=["star"]), default_transform())


def test_the_cli_prints_what_the_evidence_scan_skipped(tmp_path, capsys, monkeypatch):
    from lightning_unlearn.cli import main
    root = _evidence_folder(tmp_path / "ev", [("photo", "star")])
    (root / "photo" / "star" / "1.png").write_bytes(b"")

    def stop(*args, **kwargs):
        raise ValueError("stopped after the scan")
    monkeypatch.setattr(edit, "unlearn_", stop)
    code = main(["unlearn", "--forget-classes", "star", "--depth", "deep", "--evidence", str(root),
                 "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "stopped after the scan" in err
    assert f"lightning-unlearn unlearn: warning: evidence folder {root}: skipped 1 unreadable image file(s) " \
           f"(first: {root / 'photo/star/1.png'})" in err


def test_an_interrupt_names_the_outputs_that_are_complete(tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace
    from lightning_unlearn import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "json", SimpleNamespace(dumps=interrupted))  # while the report goes to stdout
    out = tmp_path / "out"
    code = cli.main(["unlearn", "--forget-classes", "star", "--no-progress", "-o", str(out), "--json", "-"])
    captured = capsys.readouterr()
    assert code == 130 and (out / "edit.safetensors").is_file() and not captured.out
    assert captured.err.splitlines()[-1] == f"lightning-unlearn unlearn: interrupted; complete: {out}/; --json - was " \
                                            "not written"
    monkeypatch.setattr(edit, "unlearn_", interrupted)
    assert cli.main(["unlearn", "--forget-classes", "star", "-o", str(tmp_path / "o2")]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "lightning-unlearn unlearn: interrupted before any output was complete; nothing half-written was left behind")
    assert not (tmp_path / "o2").exists()


def _command_line(script: str, tmp_path, *args) -> subprocess.CompletedProcess:
    """``lightning-unlearn *args`` in a fresh interpreter, after ``script``."""
    code = f"import sys\nsys.argv = ['lightning-unlearn', *{[str(a) for a in args]!r}]\n{script}\n" \
           "from lightning_unlearn.cli import main\nmain()\nraise SystemExit('main() returned')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})


def test_an_interrupt_during_start_up_prints_one_line(tmp_path):
    script = """import builtins
real = builtins.__import__
def importing(name, *args, **kwargs):  # an interrupt while torch loads (seconds, at start-up)
    if name == "torch":
        raise KeyboardInterrupt
    return real(name, *args, **kwargs)
builtins.__import__ = importing"""
    proc = _command_line(script, tmp_path, "unlearn", "--forget-classes", "star", "-o", "out")
    assert proc.returncode == 130 and not (tmp_path / "out").exists()
    assert proc.stderr == ("lightning-unlearn unlearn: interrupted before any output was complete; nothing "
                           "half-written was left behind\n")


def test_an_interrupt_after_the_output_is_complete_says_so(tmp_path):
    script = """import atexit, os, signal
import lightning_unlearn.export as export
save = export.save_model_and_edit
class Finaliser:
    def __del__(self):  # Python drops an exception raised here
        os.kill(os.getpid(), signal.SIGINT)
def saved(*args, **kwargs):
    files = save(*args, **kwargs)
    Finaliser()
    return files
export.save_model_and_edit = saved  # an interrupt in a finaliser, once the folder is written
atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))  # and one while the process exits"""
    proc = _command_line(script, tmp_path, "unlearn", "--forget-classes", "star", "--no-progress", "-o", "out",
                         "--json", "r.json")
    assert proc.returncode == 130 and "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert proc.stderr.splitlines()[-2:] == ["lightning-unlearn unlearn: interrupted; complete: out/, --json r.json"] * 2
    assert json.loads((tmp_path / "r.json").read_text())["files"] and (tmp_path / "out" / "edit.safetensors").is_file()
