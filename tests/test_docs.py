"""The documentation: result tables rendered from their JSON, the Sphinx build, and every Python code
block of README.md and docs/*.md executed.

- ``test_results_pages_match_their_json``: every ``BEGIN generated`` block of the README and the docs
  pages equals what ``docs/render_results.py`` renders from ``benchmarks/results/*.json``.
- ``test_sphinx_build``: ``sphinx-build -W`` (warnings are errors) succeeds; skipped when Sphinx,
  myst-parser or furo is not installed (``pip install -e ".[docs]"``).
- ``test_code_block``: each ```` ```python ```` block runs in a fresh process, in a temporary folder
  that holds ``my-images/`` (images of the embedded world in ``<domain>/<class>/`` layout, the
  folder the README's example reads). A block whose first line is ``# needs: real weights ...`` is
  skipped with that reason.
- ``test_own_model_folder_data_example``: ``examples/own_model_folder_data.py`` on a folder the test
  writes itself.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"^# needs: (.*)$")


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("COLUMNS", None)
    return env


def _render_module():
    spec = importlib.util.spec_from_file_location("render_results", DOCS / "render_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_results_pages_match_their_json():
    diffs = _render_module().check()
    assert not diffs, ("pages differ from what docs/render_results.py renders from benchmarks/results/*.json; "
                       "run `python docs/render_results.py`:\n" + "\n".join(diffs))


def test_research_logs_match_their_json():
    """The JSON conversions of the deep-mode research logs equal what docs/logs_to_json.py makes of the logs."""
    spec = importlib.util.spec_from_file_location("logs_to_json", DOCS / "logs_to_json.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--check"]) == 0, "run `python docs/logs_to_json.py`"


def test_every_page_has_its_generated_blocks_filled():
    """A block whose name the renderer does not know fails in render; an empty block means it was never run."""
    render = _render_module()
    for page in PAGES:
        for m in render.BLOCK.finditer(page.read_text()):
            assert m.group("body").strip(), f"{page.name}: generated block {m.group('name')!r} is empty"


def test_readme_is_short_and_keeps_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    assert ('python3 -m venv .venv && . .venv/bin/activate && pip install "torch==2.14.1" "torchvision==0.29.1" '
            '&& pip install -e . && lightning-unlearn demo --out unlearn-demo --json unlearn-demo/demo.json') in text
    assert ('python3 -m venv .venv && . .venv/bin/activate && pip install "torch==2.14.1" "torchvision==0.29.1" '
            '&& pip install -e ".[test]" && python -m pytest -q -n 2 --dist loadfile tests') in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_stand_alone(page):
    """Nothing points outside the repository or at where it was built."""
    text = page.read_text().lower()
    for word in ["../shared", "lent gpu", "these machines", "session", "issue"]:
        assert word not in text, f"{page.name} mentions {word!r}"


def test_sphinx_build(tmp_path):
    for module in ["sphinx", "myst_parser", "furo"]:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install -e '.[docs]' to build the docs")
    out = tmp_path / "html"
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS),
                           str(out)], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ["index.html", "api.html", "results.html", "search.html", "searchindex.js", "genindex.html"]:
        assert (out / name).is_file(), name
    api = (out / "api.html").read_text()
    import lightning_unlearn
    for name in lightning_unlearn.__all__:  # the API reference lists every public name
        assert f'id="lightning_unlearn.{name}"' in api, name


def _blocks():
    for page in PAGES:
        for k, m in enumerate(FENCE.finditer(page.read_text())):
            code = m.group(1)
            first = code.splitlines()[0] if code.strip() else ""
            skip = SKIP.match(first)
            marks = [pytest.mark.skip(reason=f"{page.name} block {k + 1} needs {skip.group(1)}")] if skip else []
            yield pytest.param(code, id=f"{page.name}-{k + 1}", marks=marks)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """A few images of every cell of the embedded world, as <root>/<domain>/<class>/<n>.png."""
    from lightning_unlearn.data import World
    from lightning_unlearn.data.datasets import write_world
    root = tmp_path_factory.mktemp("data") / "my-images"
    write_world(World("test", n_per_cell=4), root)
    return root


@pytest.mark.parametrize("code", list(_blocks()))
def test_code_block(code, image_folder, tmp_path):
    (tmp_path / "my-images").symlink_to(image_folder, target_is_directory=True)
    script = tmp_path / "block.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=_env(),
                          timeout=180)
    assert proc.returncode == 0, f"code block failed:\n{code}\n--- output ---\n{proc.stdout}\n{proc.stderr[-4000:]}"


def test_own_model_folder_data_example(tmp_path):
    """A randomly initialised ViT-B-32 and a folder of images written here: load, request, edit, evaluate,
    save, reload."""
    from PIL import Image
    import numpy as np
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for domain in ["photo", "sketch"]:
        for cls in ["dog", "cat", "car"]:
            folder = root / domain / cls
            folder.mkdir(parents=True)
            for n in range(2):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{n}.png")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "own_model_folder_data.py"), "--data", str(root),
                           "--forget-classes", "dog", "--forget-domains", "sketch", "--out", str(tmp_path / "out")],
                          cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reloaded" in proc.stdout
    assert (tmp_path / "out" / "open_clip_config.json").is_file()
    assert (tmp_path / "out" / "edit.safetensors").is_file()


def _results(name: str) -> dict:
    import json
    return json.loads((ROOT / "benchmarks" / "results" / name).read_text())


def test_numbers_in_readme_prose_match_their_json():
    """The few numbers the README states in prose (outside the generated table) against their JSON."""
    text = " ".join((ROOT / "README.md").read_text().split())
    demo = _results("demo_steps30.json")
    assert f"{demo['seconds']:.0f} s of demo in `benchmarks/results/demo_steps30.json`" in text
    cov = _results("coverage.json")["summary"]
    assert f"Of the {cov['configs']} open_clip configs, {cov['built']} build" in text
    assert cov["editable"] == cov["built"]  # "all of them edit, fold, restore and export"
    rows = _results("cell_sweep.json")["rows"]
    kept = [r["after"]["forget_acc"] for r in rows if r["variant"] in ("p4s120seed1", "p4s120seed2")
            and round(r["after"]["forget_acc"], 2) > 0.05]
    assert f"a few cells keep {min(kept):.2f}-{max(kept):.2f}" in text
    steps = [r["optimizer_steps_kept"] for f in ("time_ratio.json", "time_ratio_ds.json") for r in _results(f)["runs"]
             if r["method"] == "finetune" and r["converged"]]
    assert f"forgets in {min(steps)}-{max(steps)} steps" in text


def test_seed_cells_in_results_limitations():
    rows = _results("cell_sweep.json")["rows"]
    counts = [sum(round(r["after"]["forget_acc"], 2) > 0.05 for r in rows if r["variant"] == v)
              for v in ("p4s120seed1", "p4s120seed2")]
    text = " ".join((DOCS / "results.md").read_text().split())
    assert f"at seeds 1 and 2, {counts[0]} and {counts[1]} cells keep" in text


@pytest.mark.parametrize("command", [None, "demo", "unlearn", "evaluate", "export"])
def test_help_text_wraps_cleanly(command, monkeypatch):
    """Descriptions fill the line (no break after the first words); export --help has no --json."""
    import argparse
    from lightning_unlearn.cli import build_parser
    monkeypatch.setenv("COLUMNS", "100")
    parser = build_parser()
    if command:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[command]
    text = parser.format_help()
    description = text.split("\n\n")[1].splitlines()
    assert all(len(line) <= 100 for line in text.splitlines() if not line.startswith("  "))
    assert len(description) == 1 or len(description[0]) > 70, description
    if command == "export":
        assert "--json" not in text
