"""The ``lightning-unlearn`` command line: unlearn -> open_clip folder -> evaluate on image folders gives
the in-process numbers; export of a Lightning checkpoint; the demo's JSON and figure; --help; and
every bad input ends with a clear message and exit code 2. Runs on a snapshot of the embedded
weights (a training run may rewrite the shipped file meanwhile)."""
import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from lightning_unlearn import ForgetRequest, embedded, unlearn_
from lightning_unlearn.cli import main
from lightning_unlearn.data import World, WorldDataset, write_world
from lightning_unlearn.artifact import apply_edit_file_, load_edit
from lightning_unlearn.zeroshot import evaluate, split_accuracy

ROOT = Path(__file__).resolve().parents[1]
N_PER_CELL = 2
FORGET = ["--forget-classes", "star"]  # global: the fast text-only method changes the model for it
METHOD = ["--method", "text"]


def cli(argv, capsys):
    """(exit code, stdout, stderr) of ``main(argv)`` (argparse's own exits included)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    return write_world(World("test", n_per_cell=N_PER_CELL), tmp_path_factory.mktemp("data") / "world")


@pytest.fixture(scope="module")
def loader():
    return torch.utils.data.DataLoader(WorldDataset(World("test", n_per_cell=N_PER_CELL)), batch_size=256)


def in_process(model, tokenizer, loader, request=None):
    e = embedded.Embedded
    res = evaluate(model, tokenizer, e.classnames, e.templates, loader, e.domains, progress=False)
    return res | (split_accuracy(res["correct"], res["total"], request) if request else {})


def cells(report):
    return {(c["class"], c["domain"]): c["accuracy"] for c in report["cells"]}


def test_unlearn_then_open_clip_then_evaluate_gives_the_in_process_numbers(tmp_path, weights, world_dir, loader,
                                                                           capsys):
    out = tmp_path / "no-stars"
    code, stdout, err = cli(["unlearn", "--pretrained", weights, *FORGET, *METHOD, "-o", out,
                             "--json", tmp_path / "u.json", "--no-progress"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [".lightning_unlearn", "edit.json", "edit.safetensors",
                                                     "open_clip_config.json", "open_clip_model.safetensors"]
    report = json.loads((tmp_path / "u.json").read_text())
    assert report["paradigm"] == "global" and report["output"] == str(out)
    assert "local-dir:" in stdout

    # the same edit in process (the library's default config but for the method, as the command)
    e = embedded.load_embedded(weights)
    request = ForgetRequest(e.classnames, e.domains, forget_classes=["star"])
    before = in_process(e.model, e.tokenizer, loader, request)
    original = copy.deepcopy(e.model)
    result = unlearn_(e.model, e.tokenizer, request, method="text", progress=False)
    assert report["ranks"] == result.ranks and report["config"]["solver"] == result.config.solver
    after = in_process(e.model, e.tokenizer, loader, request)

    # open_clip alone loads the folder, with the same outputs
    loaded, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    loaded.eval()
    x = next(iter(loader))[0][:8]
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(x), e.model.encode_image(x), rtol=0, atol=1e-6)

    # evaluate the folder model on the world written to folders == in process
    code, stdout, err = cli(["evaluate", "--model", f"local-dir:{out}", "--data", world_dir, *FORGET,
                             "--json", tmp_path / "after.json", "--no-progress"], capsys)
    assert code == 0, err
    got = json.loads((tmp_path / "after.json").read_text())
    assert cells(got) == after["cells"]
    assert (got["micro"], got["forget_acc"], got["retain_acc"]) == (after["micro"], after["forget_acc"],
                                                                    after["retain_acc"])
    assert got["n_images"] == len(loader.dataset) and "star" in stdout and "*" in stdout
    # ... and the unedited embedded model (--pretrained: its weights) == in process before
    code, _, err = cli(["evaluate", "--pretrained", weights, "--data", world_dir, *FORGET,
                        "--json", tmp_path / "before.json", "--no-progress"], capsys)
    assert code == 0, err
    got = json.loads((tmp_path / "before.json").read_text())
    assert cells(got) == before["cells"] and got["forget_acc"] == before["forget_acc"]

    # the edit artifact re-applies to the original model: the same outputs, and the request it records
    art = load_edit(out / "edit.safetensors")
    assert art.meta["request"] == request.to_dict()
    apply_edit_file_(original, art)
    with torch.no_grad():
        torch.testing.assert_close(original.encode_image(x), e.model.encode_image(x), rtol=0, atol=1e-6)

    # existing output: refused, then replaced with --overwrite
    code, _, err = cli(["unlearn", "--pretrained", weights, *FORGET, *METHOD, "-o", out, "--no-progress"], capsys)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    stamp = (out / "open_clip_model.safetensors").stat().st_mtime_ns
    code, _, err = cli(["unlearn", "--pretrained", weights, "--forget-classes", "moon", *METHOD, "-o", out,
                        "--overwrite", "--no-progress"], capsys)
    assert code == 0, err
    assert (out / "open_clip_model.safetensors").stat().st_mtime_ns != stamp
    assert load_edit(out / "edit.safetensors").meta["request"]["forget_classes"] == ["moon"]
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name or p.name.endswith(".old")]


def test_export_turns_a_lightning_checkpoint_into_an_open_clip_folder(tmp_path, weights, world_dir, capsys):
    L = pytest.importorskip("lightning")
    module_mod = pytest.importorskip("lightning_unlearn.module")
    module = module_mod.CLIPUnlearning(forget_classes=["star"], unlearn={"method": "text"},
                                       arch=embedded.register(), weights=str(weights))
    module.compute_edit()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.strategy.connect(module)
    ckpt = tmp_path / "star.ckpt"
    trainer.save_checkpoint(ckpt)

    out = tmp_path / "exported"
    code, stdout, err = cli(["export", ckpt, "-o", out], capsys)
    assert code == 0, err
    files = {p.name for p in out.iterdir()}
    assert {"open_clip_config.json", "open_clip_model.safetensors", "edit.safetensors"} <= files
    loaded, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    folded = module.folded_model()
    x = WorldDataset(World("test", 1))[0][0][None]
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().encode_image(x), folded.encode_image(x), rtol=0, atol=1e-6)
    original = embedded.load_embedded(weights).model  # the edit alone re-applies to the original weights
    apply_edit_file_(original, out / "edit.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(original.encode_image(x), folded.encode_image(x), rtol=0, atol=1e-6)
    code, _, err = cli(["export", ckpt, "-o", out], capsys)
    assert code == 2 and "already exists" in err
    # a checkpoint whose weights do not fit the module: the keys are named
    raw = torch.load(ckpt, weights_only=True)
    raw["state_dict"]["clip.bogus"] = raw["state_dict"].pop("clip.logit_scale")
    torch.save(raw, tmp_path / "bad.ckpt")
    code, _, err = cli(["export", tmp_path / "bad.ckpt", "-o", tmp_path / "bad"], capsys)
    assert code == 2 and "does not match CLIPUnlearning" in err and "clip.logit_scale" in err and "clip.bogus" in err
    assert not (tmp_path / "bad").exists()
    code, _, err = cli(["export", ckpt, "-o", out, "--overwrite", "--model", "RN50"], capsys)
    assert code == 2 and "do not match model_cfg" in err and "visual." in err


def test_demo_writes_the_json_and_the_figure(tmp_path, weights, capsys):
    out, report = tmp_path / "demo", tmp_path / "demo.json"
    code, stdout, err = cli(["demo", "--n-per-cell", 1, "--method", "text", "--out", out, "--json", report,
                             "--pretrained", weights, "--no-progress"], capsys)
    assert code == 0, err
    data = json.loads(report.read_text())
    assert [p["paradigm"] for p in data["paradigms"]] == ["global", "domain-specific", "domain"]
    for p in data["paradigms"]:
        for key in ["forget_acc_before", "forget_acc_after", "retain_acc_before", "retain_acc_after"]:
            assert 0.0 <= p[key] <= 1.0
    star = data["paradigms"][0]  # the trained model reads its 4 stars, and the edit makes it forget them
    assert star["forget_acc_before"] >= 0.75 and star["forget_acc_after"] <= 0.25
    assert star["retain_acc_after"] >= star["retain_acc_before"] - 0.1
    assert data["paradigms"][0]["forget"] == {"classes": ["star"], "domains": None}
    assert data["paradigms"][1]["forget"] == {"classes": ["star"], "domains": ["sketch"]}
    assert data["paradigms"][2]["forget"] == {"classes": None, "domains": ["painting"]}
    assert [p["refused"] is None for p in data["paradigms"]] == [True, True, False]  # text-only: no whole domains
    assert "method='multimodal'" in data["paradigms"][2]["refused"]
    assert data["paradigms"][2]["forget_acc_after"] == data["paradigms"][2]["forget_acc_before"]
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    grid = data["paradigms"][0]["cells_after"]
    assert len(grid) == len(data["classnames"]) == 10 and len(grid[0]) == len(data["domains"]) == 4
    for word in ["global", "domain-specific", "painting", "forget accuracy", "retain accuracy", "->"]:
        assert word in stdout


def test_json_to_stdout_is_json_alone(tmp_path, weights, world_dir, capsys):
    code, out, err = cli(["evaluate", "--pretrained", weights, "--data", world_dir, "--json", "-", "--no-progress"],
                         capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["n_images"] == 40 * N_PER_CELL and "micro" in err  # the table went to stderr


@pytest.mark.parametrize("command", [None, "demo", "unlearn", "evaluate", "export"])
def test_help_has_examples(command, capsys):
    code, out, _ = cli(([command] if command else []) + ["--help"], capsys)
    assert code == 0 and "examples:" in out and "lightning-unlearn" in out


# --------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, weights):
    d = tmp_path_factory.mktemp("bad")
    (d / "garbage.safetensors").write_bytes(b"\x00not safetensors" * 8)
    (d / "garbage.pt").write_bytes(b"not a torch file" * 8)
    torch.save({"x": argparse.Namespace(a=1)}, d / "objects.pt")
    from safetensors.torch import load_file
    state = load_file(str(weights))
    wrong = dict(state, **{"visual.proj": torch.zeros(3, 3), "extra.weight": torch.zeros(1)})
    del wrong["text_projection"]
    torch.save(wrong, d / "mismatched.pt")
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, d / "lightning-like.pt")
    torch.save(state, d / "plain-state.pt")
    torch.save({"w": torch.zeros(1), "run": os.system}, d / "callable.pt")
    hub = d / "hub"  # a downloaded open_clip folder: not the library's to replace
    hub.mkdir()
    for name in ("open_clip_config.json", "open_clip_model.safetensors", "README.md", "tokenizer.json"):
        (hub / name).write_text("{}")
    (d / "link").symlink_to(hub, target_is_directory=True)
    (d / "existing.json").write_text('{"kept": true}')
    (d / "empty.txt").write_text("\n  \n# only a comment\n")
    (d / "nomodel").mkdir()
    (d / "emptydata").mkdir()
    return d


BAD = [
    # (id, argv with {d} = bad-files folder and {w} = weights, message fragments)
    ("missing-weights", "unlearn --pretrained {d}/nope.safetensors --forget-classes star -o {o}",
     ["nope.safetensors", "does not exist"]),
    ("garbage-safetensors", "unlearn --pretrained {d}/garbage.safetensors --forget-classes star -o {o}",
     ["cannot read weights", "garbage.safetensors"]),
    ("garbage-pt", "unlearn --pretrained {d}/garbage.pt --forget-classes star -o {o}", ["cannot read", "garbage.pt"]),
    ("pickled-objects", "unlearn --pretrained {d}/objects.pt --forget-classes star -o {o}",
     ["refusing to load", "argparse.Namespace", "weights_only=True"]),
    ("mismatched-keys", "evaluate --pretrained {d}/mismatched.pt --data {data}",
     ["do not", "visual.proj", "text_projection", "extra.weight"]),
    ("lightning-checkpoint-as-weights", "evaluate --pretrained {d}/lightning-like.pt --data {data}",
     ["Lightning checkpoint", "export"]),
    ("empty-classnames-file", "unlearn --classnames @{d}/empty.txt --forget-classes star -o {o}",
     ["--classnames", "empty.txt is empty"]),
    ("missing-classnames-file", "unlearn --classnames @{d}/nope.txt --forget-classes star -o {o}",
     ["nope.txt does not exist"]),
    ("unknown-forget-class", "unlearn --forget-classes hert -o {o}", ["--forget-classes", "'hert'", "did you mean",
                                                                      "heart"]),
    ("unknown-forget-domain", "evaluate --data {data} --forget-domains skech", ["--forget-domains", "sketch"]),
    ("nothing-to-forget", "unlearn -o {o}", ["nothing to forget", "--forget-classes"]),
    ("everything-forgotten", "unlearn --forget-domains photo,sketch,cartoon,painting -o {o}", ["nothing is retained"]),
    ("alpha-out-of-range", "unlearn --forget-classes star --alpha 2 -o {o}", ["--alpha", "[0, 1]"]),
    ("unknown-method", "unlearn --forget-classes star --method magic -o {o}", ["--method", "multimodal"]),
    ("local-dir-missing", "unlearn --model local-dir:{d}/nowhere --classnames a,b --forget-classes a -o {o}",
     ["nowhere", "does not exist"]),
    ("local-dir-without-config", "evaluate --model local-dir:{d}/nomodel --data {data}",
     ["no open_clip_config.json"]),
    ("unknown-architecture", "evaluate --model ViT-B-33 --pretrained {w} --data {data}", ["ViT-B-33", "did you mean"]),
    ("architecture-without-weights", "evaluate --model ViT-B-32 --data {data}", ["needs --pretrained"]),
    ("classnames-required", "unlearn --model ViT-B-32 --pretrained {w} --forget-classes star -o {o}",
     ["--classnames is required"]),
    ("embedded-and-model", "evaluate --embedded --model ViT-B-32 --data {data}", ["not both"]),
    ("missing-data", "evaluate --data {d}/nope", ["--data", "does not exist"]),
    ("empty-data", "evaluate --data {d}/emptydata", ["no domain folders"]),
    ("existing-output", "unlearn --forget-classes star -o {d}", ["already exists", "--overwrite"]),
    ("missing-checkpoint", "export {d}/nope.ckpt -o {o}", ["nope.ckpt does not exist"]),
    ("garbage-checkpoint", "export {d}/garbage.pt -o {o}", ["cannot read", "garbage.pt"]),
    ("unsafe-checkpoint", "export {d}/objects.pt -o {o}", ["refusing to load", "argparse.Namespace"]),
    ("not-a-lightning-checkpoint", "export {d}/plain-state.pt -o {o}", ["not a Lightning checkpoint"]),
    ("demo-size", "demo --n-per-cell 0 --out {o}", ["--n-per-cell"]),
    ("pickled-callable", "unlearn --pretrained {d}/callable.pt --forget-classes star -o {o}",
     ["refusing to load", "posix.system", "weights_only=True"]),
    ("downloaded-folder-as-output", "unlearn --forget-classes star -o {d}/hub --overwrite",
     ["refusing to replace", "hub", "not a folder written by lightning_unlearn"]),
    ("symlink-as-output", "unlearn --forget-classes star -o {d}/link --overwrite", ["symbolic link", "hub"]),
    ("output-is-the-input-model", "unlearn --model local-dir:{d}/hub --classnames a,b --forget-classes a -o {d}/hub "
     "--overwrite", ["is (or contains, or lies inside) the input"]),
    ("weights-inside-the-output", "unlearn --pretrained {d}/hub/open_clip_model.safetensors --forget-classes star "
     "-o {d}/hub --overwrite", ["is (or contains, or lies inside) the input"]),
    ("existing-json", "evaluate --data {data} --json {d}/existing.json", ["existing.json already exists",
                                                                         "--overwrite"]),
]


@pytest.mark.parametrize("argv,fragments", [pytest.param(a, f, id=i) for i, a, f in BAD])
def test_bad_input_exits_2_with_a_clear_message(argv, fragments, bad_files, weights, world_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = argv.format(d=bad_files, w=weights, data=world_dir, o=out).split()
    if args[0] in ("unlearn", "evaluate", "demo") and "--model" not in args and "--pretrained" not in args \
            and "--embedded" not in args:
        args += ["--pretrained", str(weights)]  # the embedded architecture, stable weights
    code, _, err = cli(args, capsys)
    assert code == 2, err
    assert err.startswith(f"lightning-unlearn {args[0]}: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert not out.exists(), "nothing may be written on bad input"


def test_bad_outputs_leave_the_users_files_as_they_were(bad_files, weights, capsys):
    before = {p.name: p.read_text() for p in (bad_files / "hub").iterdir()}
    for argv in (["unlearn", "--forget-classes", "star", "-o", bad_files / "hub", "--overwrite"],
                 ["unlearn", "--model", f"local-dir:{bad_files / 'hub'}", "--classnames", "a,b", "--forget-classes", "a",
                  "-o", bad_files / "hub", "--overwrite"],
                 ["unlearn", "--forget-classes", "star", "-o", bad_files / "link", "--overwrite"]):
        assert cli(argv + ["--pretrained", weights] * ("--model" not in argv), capsys)[0] == 2
    assert {p.name: p.read_text() for p in (bad_files / "hub").iterdir()} == before
    assert (bad_files / "link").is_symlink() and (bad_files / "existing.json").read_text() == '{"kept": true}'


def test_evaluate_skips_and_reports_a_truncated_jpeg(tmp_path, weights, world_dir, capsys):
    import shutil
    data = shutil.copytree(world_dir, tmp_path / "data")
    bad = data / "sketch" / "star" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)  # a JPEG header, then nothing
    code, out, err = cli(["evaluate", "--pretrained", weights, "--data", data, "--json", "-", "--no-progress"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["skipped"] == [str(bad)] and report["n_images"] == 40 * N_PER_CELL
    assert "skipped 1 unreadable image" in err


def test_the_console_entry_point_exits_2_on_bad_input(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "lightning_unlearn.cli", "unlearn", "--forget-classes", "hert",
                           "-o", str(tmp_path / "x")], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["lightning-unlearn unlearn: error: --forget-classes name 'hert' is not "
                                                "in --classnames; did you mean ['heart']?"]
