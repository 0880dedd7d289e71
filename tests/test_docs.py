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


# ---------------------------------------------------------------------------------------------------------------
# Numbers in the prose of the docs pages (outside the generated tables), each against the JSON it comes from.
# A check is (text on the page with {} for each number, the numbers as the page writes them). The research logs
# under benchmarks/results/deep_research/ are read through their JSON conversions (docs/logs_to_json.py).

def _prose_how_it_works(r):
    u = r.summary_row("unlearning.json", "single", "domain-specific", "text")
    text_runs = [x for x in r.load("unlearning.json")["runs"] if (x["set"], x["paradigm"], x["method"]) ==
                 ("single", "domain-specific", "text")]
    defaults = r.load("unlearning.json")["defaults"]
    lb = r.load("linear_bound.json")
    inter = {x["site"]: 100 * x["interaction"] for x in lb["interaction"]}
    fitted = {(s["paradigm"], s["method"].split("@ ")[1]): s for s in lb["summary"]}
    dom = [fitted["domain", site] for site in ("pooled", "joint")]
    design = {(x["variant"], r._names(x["forget"])): x for x in r.load("design_sweep.json")["rows"]}

    def drop(variant, name, key):
        x = design[variant, name]
        return 100 * (x["before"][key] - x["after"][key])
    margin = {m: r.load(f"margin_{m}.json") for m in ("0.5", "0.75", "1.0")}
    worst_forget = max(margin["0.5"]["runs"], key=lambda x: x["forget_acc_after"])
    worst_same = max(margin["1.0"]["runs"], key=lambda x: x["same_class_other_domains_acc_before"] -
                     x["same_class_other_domains_acc_after"])
    return [
        ("`lam` {}, `mu` {})", f"{defaults['lam']:g}", f"{defaults['mu']:g}"),
        ("(forget accuracy {} mean / {} worst over the {} cells, against {} before",
         r.f3(u["forget_after_mean"]), r.f3(u["forget_after_worst"]), u["runs"],
         r.f3(sum(x["forget_acc_before"] for x in text_runs) / len(text_runs))),
        ("(columns weighted: text {}, images {})", f"{defaults['text_weight']:g}", f"{defaults['image_weight']:g}"),
        ("is `-margin` ({}), a fixed target", f"{defaults['margin']:g}"),
        ("`sink_margin` ({}) past it", f"{defaults['sink_margin']:g}"),
        ("benchmarks/results/linear_bound.json` ({} s) measures", f"{lb['total_seconds']:.0f}"),
        ("({} Adam steps on the val split", lb["steps"]),
        ("the interaction is small there too ({}%)", f"{inter['pooled']:.1f}"),
        ("barely better (whole domain {} against {})", r.f3(dom[0]["forget_after_mean"]), r.f3(dom[1]["forget_after_mean"])),
        ("the {}% interaction lets the fitted map dip under it ({} on average) only by losing {} retain points on "
         "average ({} at worst)", r.span([inter["joint"], inter["pooled"]], r.f1),
         r.span([s["forget_after_mean"] for s in dom]), r.span([s["retain_drop_mean"] for s in dom], r.f1),
         r.f1(max(s["retain_drop_worst"] for s in dom))),
        ("(after block 1-3, where {}% of the energy is interaction)",
         r.span([inter[f"block{k}"] for k in (1, 2, 3)], lambda v: f"{v:.0f}")),
        ("design_sweep.json`, {} test images per cell", r.load("design_sweep.json")["n_per_cell"]),
        ("(colour drops by up to {} points)", f"{max(drop('paper: projector, no protection', n, 'unrelated_acc') for _, n in design):.0f}"),
        ("without the text stage it fails heart-in-photos ({}:", r.f2(design["without the text stage M1", "heart in photo"]["after"]["forget_acc"])),
        ("it leaves {} of star-in-sketches", r.f2(design["two-sided, text only", "star in sketch"]["after"]["forget_acc"])),
        ("(two-stage, multimodal, {} prototypes per cell, text weight {}, image weight {}, margin {}, sink margin {}, "
         "joint site)", defaults["n_prototypes"], f"{defaults['text_weight']:g}",
         f"{defaults['image_weight']:g}", f"{defaults['margin']:g}", f"{defaults['sink_margin']:g}"),
        ("on these {} requests;", len({n for _, n in design})),
        ("The margin was set on all {} domain-specific pairs at {} test images per cell",
         margin["0.75"]["summary"][0]["runs"], margin["0.75"]["n_per_cell"]),
        ("0.5 sits at the forget limit ({} {}), 1.0 at the same-class limit ({} {} points)",
         r._cell(worst_forget["forget"]), r.f2(worst_forget["forget_acc_after"]), r._cell(worst_same["forget"]),
         r.f1(100 * (worst_same["same_class_other_domains_acc_before"] - worst_same["same_class_other_domains_acc_after"]))),
        ("150 steps cost {} points on painting", f"{drop('150 prototype steps', 'painting', 'retain_acc'):.0f}"),
    ]


WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}


def _drop(x, key, split=""):
    return 100 * (x[f"{split}before"][key] - x[f"{split}after"][key])


def _prose_research_notes(r):
    checks = []
    multi = r.load("cell_sweep_multi.json")
    reqs = [x for x in multi["rows"] if (x["paradigm"], x["variant"]) == ("multi-ds", "default")]
    shape = [(len({c for c, _ in x["forget"]}), len({d for _, d in x["forget"]})) for x in reqs]
    checks.append(("`--variant previous=`: {} such requests, fixed before any result: {} 2 x 2, {} with 2-3 classes "
                   "in one domain, {} with one class in three domains; val split, {} images per cell",
                   WORDS[len(reqs)], WORDS[shape.count((2, 2))], WORDS[sum(d == 1 for _, d in shape)],
                   WORDS[shape.count((1, 3))], multi["n_per_cell"]))
    single = [x for x in multi["rows"] if (x["paradigm"], x["variant"]) == ("domain-specific", "default")]
    test = [x["test_after"]["forget_acc"] for x in single]
    checks.append(("(all {} cells in the same run: test {} / {})", len(single), r.f3(sum(test) / len(test)),
                   r.f3(max(test))))
    by = {tuple(sorted({c for c, _ in x["forget"]})): x for x in reqs}
    ccd, ts, sq = by["circle", "cross", "diamond"], by["star", "triangle"], by["square",]
    checks.append(("(circle, cross, diamond: same classes elsewhere -{} points, retain -{}), triangle and star in "
                   "sketches and cartoons (same-class -{}), square in three of four domains (-{})",
                   f"{_drop(ccd, 'same_class_other_domains_acc'):.0f}", f"{_drop(ccd, 'retain_acc'):.0f}",
                   f"{_drop(ts, 'same_class_other_domains_acc'):.0f}", f"{_drop(sq, 'same_class_other_domains_acc'):.0f}"))

    cells = r.load("cell_sweep.json")
    n = cells["n_per_cell"]
    rows = lambda v, p="domain-specific": [x for x in cells["rows"] if (x["paradigm"], x["variant"]) == (p, v)]
    old = dict(re.findall(r"(?<!\w)(n_prototypes|proto_steps|margin)=([\d.]+)", cells["defaults"]))
    checks.append(("({} images per cell; one image = {})", n, r.f2(1 / n)))
    checks.append(("(the old defaults: {} prototypes per cell, {} steps, margin {})", old["n_prototypes"],
                   old["proto_steps"], old["margin"]))
    same = max(_drop(x, "same_class_other_domains_acc") for x in rows("p4s120"))
    checks.append(("the same-class drop of {} is one image of {}", r.f2(same), 3 * n))
    glob = rows("p4s120", "global")
    checks.append(("120 steps keep forget at {} with a worst retain drop of {}",
                   r.f3(max(x["after"]["forget_acc"] for x in glob)), r.f2(max(_drop(x, "retain_acc") for x in glob))))
    design = {(x["variant"], r._names(x["forget"])): x for x in r.load("design_sweep.json")["rows"]}
    checks.append(("150 steps cost {} retain points on the painting domain",
                   r.f1(_drop(design["150 prototype steps", "painting"], "retain_acc"))))
    kept = {v: [round(x["after"]["forget_acc"] * n) for x in rows(v) if round(x["after"]["forget_acc"], 2) > 0.05]
            for v in ("p4s120seed1", "p4s120seed2")}
    counts = sorted(len(k) for k in kept.values())
    checks.append(("**not at the two others**: {} or {} cells (mostly in cartoons) keep {}-{} of {} val images",
                   WORDS[counts[0]], WORDS[counts[1]], min(min(k) for k in kept.values()),
                   max(max(k) for k in kept.values()), n))
    mean = lambda v, s="after": sum(x[s]["forget_acc"] for x in rows(v)) / len(rows(v))
    checks.append(("halve the mean ({} -> {}, {} -> {}) and lower the val worst to {}, but the test worst stays {}",
                   r.f3(mean("p4s120seed1")), r.f3(mean("p8s120seed1")), r.f3(mean("p4s120seed2")),
                   r.f3(mean("p8s120seed2")),
                   r.f2(max(x["after"]["forget_acc"] for v in ("p8s120seed1", "p8s120seed2") for x in rows(v))),
                   r.span([max(x["test_after"]["forget_acc"] for x in rows(v)) for v in ("p8s120seed1", "p8s120seed2")],
                          r.f2)))

    proto = r.load("proto_sweep.json")
    prow = lambda p, v: [x for x in proto["rows"] if x["paradigm"] == p and x["variant"] == v]
    sizes = [len({c for c, _ in x["forget"]}) for x in prow("multi-global", "p4s120")]
    checks.append(("on the val split ({} images per cell)", proto["n_per_cell"]))
    checks.append(("Requests: whole domains = the {} domains and the {} pairs of domains; global = the {} classes, and "
                   "(`multi-global`) {} pairs of classes, {} triples and the benchmark's triangle + moon + hexagon",
                   len(prow("domain", "p4s30")), len(prow("multi-domain", "p4s30")), len(prow("global", "p4s120")),
                   WORDS[sizes.count(2)], WORDS[sizes.count(3) - 1]))
    whole = lambda v: prow("domain", v) + prow("multi-domain", v)
    worst = lambda v, split: max(_drop(x, "retain_acc", split) for x in whole(v))
    checks.append(("(1 x 30 is perfect at seed 0 and loses {}-{} points at seed 1)", r.f1(worst("p1s30seed1", "")),
                   r.f1(worst("p1s30seed1", "test_"))))
    m2 = prow("multi-domain", "p4s60seed2")
    checks.append(("(two domains at once: {} points)",
                   r.span([max(_drop(x, "retain_acc", s) for x in m2) for s in ("", "test_")], r.f1)))
    p430 = [x for v in ("p4s30", "p4s30seed1", "p4s30seed2") for x in whole(v)]
    checks.append(("(worst retain drop {}, forget at most {} where chance is",
                   r.f2(max(_drop(x, "retain_acc", s) for x in p430 for s in ("", "test_"))),
                   r.f3(max(x[s]["forget_acc"] for x in p430 for s in ("after", "test_after")))))
    cold = [x["edit_seconds"] for x in r.load("time_ratio.json")["runs"]
            if (x["set"], x["paradigm"], x["method"]) == ("single", "domain", "multimodal")]
    checks.append(("took {} s in the cold benchmark run", r.span(cold, r.f1)))
    demo = {s: next(p for p in r.load(f"demo_steps{s}.json")["paradigms"] if p["paradigm"] == "domain")
            for s in (30, 60)}
    d30 = r.load("demo_steps30.json")
    hc = (d30["classnames"].index("heart"), d30["domains"].index("cartoon"))
    painting = d30["domains"].index("painting")
    others = [v for i, row in enumerate(demo[30]["cells_after"]) for j, v in enumerate(row)
              if j != painting and (i, j) != hc]
    pct = lambda v: f"{100 * v:.0f}"
    checks.append(("and {} s against {} s at 60 steps", r.f1(demo[30]["seconds"]), r.f1(demo[60]["seconds"])))
    checks.append(("heart in cartoons goes {} -> {} % ({} % with 60 steps), every other retained cell stays at {}-{} %, "
                   "and retain accuracy goes {} -> {} %", pct(demo[30]["cells_before"][hc[0]][hc[1]]),
                   pct(demo[30]["cells_after"][hc[0]][hc[1]]), pct(demo[60]["cells_after"][hc[0]][hc[1]]),
                   pct(min(others)), pct(max(others)), pct(demo[30]["retain_acc_before"]),
                   pct(demo[30]["retain_acc_after"])))
    secs = lambda v: sum(x["seconds"] for x in prow("global", v)) / len(prow("global", v))
    fast = [secs("p4s120") / secs(v) for v in ("p1s20", "p1s20seed1", "p1s20seed2")]
    checks.append(("1 x 20 held at three seeds, {}x to {}x faster", f"{min(fast):.0f}", f"{max(fast):.0f}"))
    am = next(x for x in prow("multi-global", "p1s20") if {c for c, _ in x["forget"]} == {"arrow", "moon"})
    checks.append(("(arrow + moon {} points val, {} test;", r.f1(_drop(am, "retain_acc")),
                   r.f1(_drop(am, "retain_acc", "test_"))))
    recipe = r.load("time_ratio_recipe_3e-4.json")
    checks.append(("triangle + moon + hexagon {} on the test split in `time_ratio_recipe_3e-4.json`",
                   r.f1(r.summary_row("time_ratio_recipe_3e-4.json", "multi", "global", "multimodal")["retain_drop_mean"])))
    mg = prow("multi-global", "p4s120")
    checks.append(("where 4 x 120 stays at {} (its test worst, {},", r.f2(max(_drop(x, "retain_acc") for x in mg)),
                   r.f2(max(_drop(x, "retain_acc", "test_") for x in mg))))
    checks.append(("(star, global; val split, {} images per cell;", r.load("finetune_sweep.json")["n_per_cell"]))
    ft = [x for x in recipe["runs"] if x["method"] == "finetune" and x["paradigm"] == "global"]
    stuck = [x for x in ft if not x["converged"]]
    checks.append(("(test split, {} images per cell, `benchmarks/results/time_ratio_recipe_3e-4.json`",
                   recipe["n_per_cell"]))
    checks.append(("reached its criterion on only {} of {} classes: cross rolled back every epoch (synthetic accuracy "
                   "{}), arrow, moon and hexagon ended at {}", sum(x["converged"] for x in ft), len(ft),
                   r.f2(next(x for x in stuck if "'cross'" in x["forget"])["synthetic_acc_after"]),
                   r.span([x["synthetic_acc_after"] for x in stuck if "'cross'" not in x["forget"]], r.f2)))
    every = r.load("finetune_sweep_all.json")["rows"]
    checks.append(("reaches the criterion on {} of {} classes, the most of the two points run on every class "
                   "(3e-4 x 10: {})", sum(x["converged"] for x in every), len(every), sum(x["converged"] for x in ft)))
    return checks


def _prose_deep_mode(r):
    dr = r.deep_research
    sweep = r.load("deep_sweep.json")
    ssum = {(s["paradigm"], s["variant"]): s for s in sweep["summary"]}
    model = r.load("deep_model.json")
    msum = {(s["paradigm"], s["variant"]): s for s in model["summary"]}
    k = model["every_cell"][0]
    stats = sweep["prototype_stats"]
    exp7 = dr("exp7_normalised_global.json")["rows"] + dr("exp7_normalised_ds_domain.json")["rows"]
    rounds = lambda p, n: [x for x in exp7 if x["paradigm"] == p and x["round"] == n]
    mean = lambda xs: sum(xs) / len(xs)
    exp3 = dr("exp3_spans_star.json")["rows"]
    span44 = [x for x in exp3 if x.get("span") == "protocells+evcells"]
    exp6 = dr("exp6_evidence_count_global.json")["rows"] + dr("exp6_evidence_count_ds_domain.json")["rows"]
    every = lambda p, n: [x["probe_bal_raw"] for x in exp6 if x["paradigm"] == p and x["variant"] == f"real-train-{n}"]
    counts = sorted({int(x["variant"].rsplit("-", 1)[1]) for x in exp6 if x["variant"].startswith("real-train-")})
    zs80 = [msum[p, f"deep+every-cell-{k}"]["zs_forget"] for p in ("global", "domain-specific")]
    pct = lambda v: f"{100 * v:.0f}"
    everywhere_table = dr("deep_sweep_normalised_everywhere.json")["summary_table"]  # worst drop in brackets
    order = dr("exp8_order.json")["rows"]
    pick = lambda rows, p, v: [x["zs_forget"] for x in rows if x["paradigm"] == p and x["variant"] == v]
    real = dr("exp10_real_surface.json")["rows"]
    real16 = dr("exp10_real_surface_16.json")["rows"]
    tower = dr("exp9_text_tower.json")["rows"]
    audit = [x for x in dr("exp11_audit.json")["rows"] if x["variant"].startswith("deep")]
    kept = next(x for x in dr("exp4_kept_subspace_star.json")["rows"] if x["variant"] == "Tkept" and not x["perp"])
    cells = r.load("deep_cells.json")
    heart = {d: next(x for x in cells["rows"] if x["forget"] == [["heart", d]]) for d in ("photo", "painting")}
    ratio = [msum[p, "deep"]["edit_seconds"][0] / msum[p, "shallow"]["edit_seconds"][0]
             for p in ("global", "domain-specific")]
    text_global = pick(tower, "global", "deep-every+text")
    return [
        ("(a binary probe \"forgotten vs rest\" still scores {})", r.f2(msum["global", "shallow"]["probe_bal_raw"][0])),
        ("the default multimodal surface edit and {} images per cell", k),
        ("still reads the class at {} (every class, `exp7_normalised_global.log`)",
         r.span([x["bal_norm"] for x in rounds("global", 0)])),
        ("sits {} within-cell standard deviations from the rest (d' = {}, star)", f"{exp3[0]['d_prime']:.0f}",
         r.f1(exp3[0]["d_prime"])),
        ("class gaps point cos {} along the real ones", r.f2(stats["proto_class_delta_cos"])),
        ("scored on the edited test split, {} images per cell;", dr("exp6_evidence_count_global.json")["n_per_cell"]),
        ("reach the probe targets at about {} per cell for class and domain groups and about {} for one forgotten cell",
         next(n for n in counts if every("global", n) and every("domain", n)
              and max(mean(every("global", n)), mean(every("domain", n))) <= 0.60),
         next(n for n in counts if every("domain-specific", n) and max(every("domain-specific", n)) <= 0.65)),
        ("(the probes' fitting set) reads {} on every request",
         r.span([x["probe_bal_raw"] for x in exp6 if x["variant"] == "oracle-val"])),
        ("{} requests: every class, every one of the {} cells, every domain; {} val images per cell fit the probes, {} "
         "test images per cell are scored; evidence from the train split: {} per forgotten cell",
         sum(s["runs"] for (p, v), s in ssum.items() if v == "none"), ssum["domain-specific", "none"]["runs"],
         sweep["n_per_cell"], sweep["n_per_cell"], sweep["n_evidence"]),
        ("`deep+evidence`: {} real images per forgotten cell", sweep["n_evidence"]),
        ("zero-shot accuracy of the prototypes themselves {}, mean distance to the real cell mean {} of its norm, cosine "
         "between the prototype and the real \"class minus rest\" gap {} on average", r.f2(stats["proto_zs_acc"]),
         r.f2(stats["proto_to_real_mean_dist_rel"]), r.f2(stats["proto_class_delta_cos"])),
        ("the raw direction alone leaves the normalised probe at {}; adding the normalised gap (one more direction) takes "
         "it to {} at unchanged raw probe and colour, with retained zero-shot {} (the eraser alone); further rounds cost "
         "retained zero-shot (after four rounds: {} at worst, {} on average). Domain-specific ({} cells) and whole "
         "domains: normalised probe {} -> {} and {} -> {}.",
         r.span([x["bal_norm"] for x in rounds("global", 0)]), r.span([x["bal_norm"] for x in rounds("global", 1)]),
         r.span([x["zs_retain"] for x in rounds("global", 1)]), r.f2(min(x["zs_retain"] for x in rounds("global", 4))),
         r.f2(mean([x["zs_retain"] for x in rounds("global", 4)])), len(rounds("domain-specific", 0)),
         *[r.f3(mean([x["bal_norm"] for x in rounds(p, n)])) for p in ("domain-specific", "domain") for n in (0, 1)]),
        ("costs colour (worst {} points) and retained accuracy ({})",
         *[r.f2(max(float(re.search(r"\(([-\d.]+)\)", x[col]).group(1)) for x in everywhere_table
                    if x["variant"] == "deep")) for col in ("colour drop", "zs_retain drop")]),
        ("the first {} requests of each class paradigm, {} images per cell; {} train images of every cell as evidence",
         WORDS[model["limit"]], model["n_per_cell"], k),
        ("so {}-{} % of them are still named (worst {})", pct(zs80[0][0]), pct(zs80[1][0]),
         r.f2(max(z[1] for z in zs80))),
        ("the eraser after the surface edit instead of before ({} global, {} domain-specific: no better)",
         " / ".join(map(r.f3, pick(order, "global", "post"))), " / ".join(map(r.f3, pick(order, "domain-specific", "post")))),
        ("(4 per cell: circle {}, square {}, domain-specific {}; 16 per cell, domain-specific: {}: not consistent)",
         *map(r.f3, pick(real, "global", "deep-every+real-surface")),
         " / ".join(map(r.f2, pick(real, "domain-specific", "deep-every+real-surface"))),
         " / ".join(map(r.f2, pick(real16, "domain-specific", "deep-every+real-surface-16")))),
        ("moves the forgotten prompt itself: global {} (circle, square) at the same depth, domain-specific no better "
         "({}, from {};", " / ".join(map(r.f3, text_global)),
         " / ".join(map(r.f2, pick(tower, "domain-specific", "deep-every+text"))),
         " / ".join(map(r.f2, pick(tower, "domain-specific", "deep-every")))),
        ("paraphrased prompts keep {} % of it", r.span([x["paraphrase_acc"] for x in audit], pct)),
        ("zero-shot on the domain back to {} with real images of every cell, and {} with retained accuracy down to {} "
         "data-free", r.span(pick(order, "domain", "pre") + pick(order, "domain", "post"), r.f2),
         r.span(pick(order, "domain", "pre-free")),
         r.f3(min(x["zs_retain"] for x in order if x["paradigm"] == "domain" and x["variant"] == "pre-free"))),
        ("alone does hide the domain from a probe ({} above)", r.f3(ssum["domain", f"deep+every-cell-{k}"]["probe_bal_raw"][0])),
        ("the {}-dimensional span of every cell's prototype mean plus the evidence leaves d' {}, probe {}, and costs {} "
         "retained zero-shot points", span44[0]["rank"], f"{span44[0]['d_prime']:.0f}",
         r.span([x["bal_raw"] for x in span44], r.f2), pct(1 - span44[0]["zs_retain"])),
        ("Projecting the output onto the {} kept classes' text directions alone still gives probe {}",
         f"{kept['rank']:.0f}", r.f3(kept["bal_raw"])),
        ("and {} images of each of 4 cells that is {}, a probe at {}", sweep["n_evidence"],
         r.f1((128 / (4 * sweep["n_evidence"])) ** 0.5),
         r.span([mean(every(p, sweep["n_evidence"])) for p in ("global", "domain-specific")], r.f1)),
        ("(recall {} at {} images per cell)",
         r.f3(mean([x["probe_recall"] for x in exp6 if x["paradigm"] == "global" and x["variant"] == f"real-train-{counts[-1]}"])),
         counts[-1]),
        ("(the composed edit, defaults; {} images per cell;", cells["n_per_cell"]),
        ("(heart in photos {} / {}, heart in paintings {} / {}, val / test)",
         *[r.f2(heart[d][s]["forget_acc"]) for d in ("photo", "painting") for s in ("after", "test_after")]),
        ("the deep mode reaches no depth (probes {}) for {}x the shallow edit's time", r.span(
            [s["probe_bal_raw"][0] for (p, v), s in ssum.items() if v == "deep"]), r.span(ratio, r.f1)),
        ("leaves {}-{} % zero-shot on the forgotten cells (text tower: {}-{} % globally)", pct(zs80[0][0]), pct(zs80[1][0]),
         f"{100 * min(text_global):g}", f"{100 * max(text_global):g}"),
    ]


def _prose_results(r):
    robust = r.load("robustness.json")
    rb = {x["kind"]: x for x in robust["robustness"] if x["condition"].startswith("default")}
    rp = {v: {x["kind"]: x for x in robust["robustness"] if x["condition"].startswith(v)} for v in ("fp64", "bf16")}
    neighbour = [x["worst_retain_cell"]["drop_points"] for x in rb["domain-specific"]["failing_runs"]
                 if x["worst_retain_cell"]["cell"][1] == x["request"].split(" in ")[1]
                 and x["worst_retain_cell"]["cell"][0] != x["request"].split(" in ")[0]]
    default_rows = [x for x in robust["rows"] if x["variant"].startswith("default")]
    failing = [f for x in default_rows for f in x["agreement"]["real_failing_cells"]]
    several = [x for x in robust["rows"] if x["variant"].startswith("default") and x["paradigm"] == "domain-specific"
               and len(x["forget"]["forget_classes"]) > 1]
    ms = lambda name, set_, paradigm, method: r.summary_row(name, set_, paradigm, method)
    ds = ms("time_ratio_ds.json", "single", "domain-specific", "multimodal")
    u = {p: ms("unlearning.json", "single", p, "multimodal") for p in ("global", "domain-specific", "domain")}
    ft_runs = lambda *files: [x for f in files for x in r.load(f)["runs"] if x["method"] == "finetune"]
    domain_steps = [x["optimizer_steps_kept"] for x in ft_runs("time_ratio.json")
                    if x["paradigm"] == "domain" and x["converged"]]
    # the baseline on every domain-specific cell, against the cold edits of the same run
    ds_runs = r.load("time_ratio_ds.json")["runs"]
    ds_edit = {x["forget"]: x for x in ds_runs if x["method"] == "multimodal"}
    ds_ft = [x for x in ds_runs if x["method"] == "finetune"]
    ds_done = [x for x in ds_ft if x["converged"]]
    ds_per = [x["edit_seconds"] / ds_edit[x["forget"]]["edit_seconds"] for x in ds_done]
    stuck = [x["synthetic_acc_after"] for x in ds_ft if not x["converged"]]
    high, low = [v for v in stuck if round(v, 2) >= 0.5], [v for v in stuck if round(v, 2) < 0.5]
    done = [x for x in ft_runs("time_ratio.json", "time_ratio_ds.json") if x["converged"]]
    ratio = {p: ms(f, "single", p, "finetune") for f, p in (("time_ratio.json", "global"), ("time_ratio.json", "domain"),
                                                           ("time_ratio_ds.json", "domain-specific"))}
    conv = {p: ratio[p]["converged"] for p in ratio}
    # controlled forgetting
    curves = {c["paradigm"]: {p["alpha"]: p for p in c["points"]} for c in r.load("alpha_sweep.json")["curves"]}
    pts = [p for c in curves.values() for p in c.values()]
    at = lambda paradigm, *alphas: [r.f3(curves[paradigm][a]["forget_acc"]) for a in alphas]
    chance = {r.f2(curves["domain"][a]["forget_acc"]) for a in (0.9, 1.0)}
    # the depth audit and the limitations
    quick = {x["paradigm"]: x["audit_after"] for x in r.load("unlearning_quick_audit.json")["runs"]}
    sweep = {(s["paradigm"], s["variant"]): s for s in r.load("deep_sweep.json")["summary"]}
    model = r.load("deep_model.json")
    k = model["every_cell"][0]
    zs = [next(s for s in model["summary"] if (s["paradigm"], s["variant"]) == (p, f"deep+every-cell-{k}"))["zs_forget"][0]
          for p in ("global", "domain-specific")]
    lb = r.load("linear_bound.json")
    dom = [s for s in lb["summary"] if s["paradigm"] == "domain" and s["method"].split("@ ")[1] in ("pooled", "joint")]
    text_ds = ms("unlearning.json", "single", "domain-specific", "text")
    # edit cost
    cost = {f: r.load(f) for f in ("edit_cost_vitb_10x4.json", "edit_cost_text_law.json", "edit_cost_mm_law.json",
                                    "edit_cost_345x6_domain.json", "edit_cost_mm_law_steps30.json",
                                    "edit_cost_mm_law_steps60.json")}
    run = lambda f, cells, warm=False, method=None: next(x for x in cost[f]["runs"] if x["cells"] == cells and
                                                       x["warm"] == warm and (method is None or x["method"] == method))
    law = lambda f: next(g for g in cost[f]["growth"] if not g["warm"])
    per_step = lambda x: x["stages"]["prototypes"] / x["stats"]["image"]["prototype_image_steps"]
    warm = [x["edit_seconds"] for f in ("edit_cost_vitb_10x4.json", "edit_cost_text_law.json", "edit_cost_mm_law.json",
                                        "edit_cost_345x6_domain.json") for x in cost[f]["runs"]
            if x["warm"] and not (f == "edit_cost_vitb_10x4.json" and x["method"] == "text")]
    vitb = run("edit_cost_vitb_10x4.json", 40, method="multimodal")
    big = run("edit_cost_345x6_domain.json", 2070)
    gb = lambda x: f"{x['peak_rss_mb'] / 1000:.2f}"
    big_steps = big["stats"]["image"]["prototype_image_steps"]
    cells = r.load("cell_sweep.json")
    old_steps = re.search(r"(?<!\w)proto_steps=(\d+)", cells["defaults"]).group(1)
    sweep_rows = lambda v: [x for x in cells["rows"] if (x["paradigm"], x["variant"]) == ("domain-specific", v)]
    seed_kept = {v: [x["after"]["forget_acc"] for x in sweep_rows(v) if round(x["after"]["forget_acc"], 2) > 0.05]
                 for v in ("p4s120seed1", "p4s120seed2")}
    ddp = r.load("ddp_scaling.json")["runs"]
    seen, later = set(), []
    for x in sweep_rows("p4s120"):
        (cls, _), = x["forget"]
        if cls in seen:
            later.append(x["seconds"])
        seen.add(cls)
    return [
        # the cold rows against unlearning.json
        ("on the domain-specific cells (forget {} / {}, retain {} / {}, same-class {} / {})",
         r.f3(ds["forget_after_mean"]), r.f3(ds["forget_after_worst"]), r.f2(ds["retain_drop_mean"]),
         r.f2(ds["retain_drop_worst"]), r.f2(ds["same_class_drop_mean"]), r.f2(ds["same_class_drop_worst"])),
        ("measured cold there lost {} points of the same classes in their other domains ({} in `unlearning.json`",
         r.f2(ms("time_ratio_ds.json", "multi", "domain-specific", "multimodal")["same_class_drop_mean"]),
         r.f2(ms("unlearning.json", "multi", "domain-specific", "multimodal")["same_class_drop_mean"])),
        ("global request lost {} retain points in `unlearning.json`",
         r.f2(ms("unlearning.json", "multi", "global", "multimodal")["retain_drop_mean"])),
        ("and {} cold (see", r.f2(ms("time_ratio.json", "multi", "global", "multimodal")["retain_drop_mean"])),
        # depth
        ("(balanced accuracy {} mean over the global requests, {} over the domain-specific cells, {} for whole domains) "
         "while paraphrased prompts are forgotten ({} / {} / {} mean)",
         *[r.f3(u[p]["probe_balanced_acc_after_mean"]) for p in u], *[r.f3(u[p]["paraphrase_acc_after_mean"]) for p in u]),
        ("the baseline converges in {} steps on a whole domain", r.span(domain_steps, str)),
        # the baseline on every domain-specific cell
        ("the baseline reaches its criterion on {} of {} cells; there the ratio is {}x in total, {}x to {}x per cell "
         "(baseline {} s, edits {} s); it stays at synthetic accuracy {} on {} cells and {} on {}",
         len(ds_done), len(ds_ft), f"{ratio['domain-specific']['time_ratio']:.1f}", f"{min(ds_per):.1f}",
         f"{max(ds_per):.1f}", r.span([x["edit_seconds"] for x in ds_done], r.f1),
         r.span([ds_edit[x["forget"]]["edit_seconds"] for x in ds_done], r.f1), r.span(high, r.f2), WORDS[len(high)],
         r.span(low, r.f2), WORDS[len(low)]),
        ("reaches its criterion in {} optimiser steps ({} s with its own synthesis)",
         r.span([x["optimizer_steps_kept"] for x in done], str), r.span([x["edit_seconds"] for x in done],
                                                                         lambda v: f"{v:.0f}")),
        ("(up to {:,} forward-backward image-steps for a class, {:,} for a whole domain)",
         vitb["stats"]["image"]["prototype_image_steps"],
         run("edit_cost_mm_law_steps30.json", 40)["stats"]["image"]["prototype_image_steps"]),
        ("(retain {}, colour {}, and {} left on the forgotten class)",
         *[r.span([x[key] for x in done], r.f2) for key in ("retain_acc_after", "unrelated_acc_after",
                                                                  "forget_acc_after")]),
        # depth audit, whole domains
        ("still finds {} % of the painted images", f"{100 * quick['domain']['retrieval_precision']:.0f}"),
        # controlled forgetting
        ("retain and colour flat at {} throughout: global star {} / {} / {} / {} at alpha 0.5 / 0.75 / 0.9 / 1; star in "
         "sketches {} / {} / {} / {}; the painting domain {} at 0.5, {} at 0.75 and chance ({}) from 0.9 on",
         r.span([p[key] for p in pts for key in ("retain_acc", "unrelated_acc")]), *at("global", 0.5, 0.75, 0.9, 1.0),
         *at("domain-specific", 0.5, 0.75, 0.9, 1.0), *at("domain", 0.5, 0.75), " / ".join(sorted(chance))),
        ("reads the forgotten cells at {} from alpha 0 to 1", r.span([p["probe_balanced_acc"] for p in pts])),
        # edit cost
        ("(the 40 x 4 request at 60 steps took {} s there, {} s above)",
         f"{run('edit_cost_mm_law_steps60.json', 160)['edit_seconds']:.0f}",
         f"{run('edit_cost_mm_law.json', 160)['edit_seconds']:.0f}"),
        ("Cold text edits grow as `{} * cells^{}` s (ViT-B-32, {} to {:,} cells", f"{law('edit_cost_text_law.json')['a']:.3f}",
         r.f2(law("edit_cost_text_law.json")["b"]), min(law("edit_cost_text_law.json")["cells_measured"]),
         max(law("edit_cost_text_law.json")["cells_measured"])),
        ("as `{} * cells^{}` s on the embedded architecture at 60 steps ({} to {} cells",
         r.f2(law("edit_cost_mm_law.json")["a"]), r.f2(law("edit_cost_mm_law.json")["b"]),
         min(law("edit_cost_mm_law.json")["cells_measured"]), max(law("edit_cost_mm_law.json")["cells_measured"])),
        ("at 30 steps the fit over the three points of the slower CPU is `{} * cells^{}` (its 10 x 4 point is high: {} ms "
         "per image-step against {} ms at 40 x 4)", r.f2(law("edit_cost_mm_law_steps30.json")["a"]),
         r.f2(law("edit_cost_mm_law_steps30.json")["b"]), r.f1(1000 * per_step(run("edit_cost_mm_law_steps30.json", 40))),
         r.f1(1000 * per_step(run("edit_cost_mm_law_steps30.json", 160)))),
        ("requests stay flat ({} s: the solve and the weights checks)", r.span(warm, r.f2)),
        ("then stays: {} GB at 40 x 4, {} GB at 345 x 6", gb(run("edit_cost_mm_law.json", 160)), gb(big)),
        ("Measured on a {}-core CPU", r.load("edit_cost_vitb_10x4.json")["machine"]["cpu_count"]),
        ("It is compute-bound: {} prototypes ({} per cell of the class)", vitb["stats"]["image"]["n_prototypes"],
         vitb["stats"]["image"]["n_prototypes"] // vitb["n_forget_cells"]),
        ("x {} steps = {:,} forward-backward image-steps at {} s each", vitb["proto_steps"],
         vitb["stats"]["image"]["prototype_image_steps"], f"{per_step(vitb):.3f}"),
        ("60 s allows about {} image-steps, i.e. {} steps per image", f"{round(60 / per_step(vitb), -1):.0f}",
         f"{60 / per_step(vitb) / vitb['stats']['image']['n_prototypes']:.0f}"),
        ("{} s cold (the law above extrapolates {} s; every image ran {} {} steps: {} ms per image-step, against {} "
         "ms at 40 x 4), {} s warm, {} GB peak RSS", f"{big['edit_seconds']:.0f}",
         f"{law('edit_cost_mm_law.json')['extrapolated_seconds_345x6']:.0f}",
         "all" if big_steps == big["cells"] * big["n_prototypes"] * big["proto_steps"] else "NOT all",
         big["proto_steps"], r.f2(1000 * per_step(big)),
         r.f2(1000 * per_step(run("edit_cost_mm_law.json", 160))),
         r.f2(run("edit_cost_345x6_domain.json", 2070, warm=True)["edit_seconds"]), gb(big)),
        ("in the every-cell sweep this made every request after a class's first one cost {} s", r.span(later, r.f1)),
        ("(at {} steps its worst domain-specific cell forgets only to {})", old_steps,
         r.f2(max(x["after"]["forget_acc"] for x in sweep_rows("default")))),
        ("(30 steps each: {:,} image-steps, half the measured run's, so about {} h on ViT-B-32 at {} s per image-step",
         big_steps * 30 // big["proto_steps"], f"{big_steps * 30 / big['proto_steps'] * per_step(vitb) / 3600:.1f}",
         f"{per_step(vitb):.3f}"),
        ("up to {:,} x {} x {} x {} s = {} h", big["cells"], big["n_prototypes"], big["proto_steps"],
         f"{per_step(vitb):.3f}", f"{big_steps * per_step(vitb) / 3600:.1f}"),
        ("(defaults, {} test images per cell;", r.load("composition.json")["n_per_cell"]),
        # the robustness sweep, default settings
        ("every class and seed ({} of {} runs with the defaults)", rb["global"]["runs_meeting_targets"],
         rb["global"]["runs"]),
        ("every domain and seed ({} of {}).", rb["domain"]["runs_meeting_targets"], rb["domain"]["runs"]),
        ("meet them on {} of {} runs: at some seeds a pair stays above chance (forget up to {} against 0.100), and one "
         "run lost {} points in one cell", rb["domain (several)"]["runs_meeting_targets"], rb["domain (several)"]["runs"],
         r.f3(rb["domain (several)"]["forget_mean_worst"]), f"{rb['domain (several)']['retain_cell_worst']:.0f}"),
        ("{} of the {} runs (40 cells x 5 seeds) meet every target", rb["domain-specific"]["runs_meeting_targets"],
         rb["domain-specific"]["runs"]),
        ("in the same domain, loses up to {} points", f"{max(neighbour):.0f}"),
        ("float64 reproduces the defaults' counts on every kind of request", ) if {
            k: (x["runs_meeting_targets"], x["runs"]) for k, x in rp["fp64"].items()} == {
            k: (x["runs_meeting_targets"], x["runs"]) for k, x in rb.items()} else ("fp64 counts DIFFER",),
        ("target on {} of {} whole-domain edits, {} of {} pairs of domains and {} of {} several-class global",
         *[v for k in ("domain", "domain (several)", "global (several)")
           for v in (rp["bf16"][k]["runs_meeting_targets"], rp["bf16"][k]["runs"])]),
        ("(defaults: it agrees with the real verdict on {} of the {} runs, and of the {} real failing cells it flagged "
         "{}, could not count {} and passed {})", sum(x["real_pass"] == x["check_passed"] for x in default_rows),
         len(default_rows), len(failing), *[sum(f["check"] == k for f in failing) for k in ("flagged", "not counted",
                                                                                           "passed")]),
        ("the same classes in their other domains lose {} points, one cell up to {}",
         r.span([x["same_class_drop"] for x in several], lambda v: f"{v:.0f}"),
         f"{rb['domain-specific (several)']['retain_cell_worst']:.0f}"),
        ("The maps are {} and each rank does about {} the one-process CPU work",
         "bit-identical" if all(x["maps_identical"] for x in ddp if x["procs"] == 2) else "NOT identical",
         "half" if all(round(x["cpu_ratio"], 1) == 0.5 for x in ddp if x["procs"] == 2) else "?"),
        ("on two free cores (the \"cores\" column) the wall time of two processes is {} of one (target 0.6: {})",
         r.span([x["ratio"] for x in ddp if x["procs"] == 2]),
         "met" if all(round(x["cpu_share"]) == x["procs"] for x in ddp) and max(
             x["ratio"] for x in ddp if x["procs"] == 2) <= 0.6 else "NOT met"),
        # limitations
        ("worst-cell target on val ({}); at seeds 1 and 2, {} and {} cells keep {} (val)",
         r.f3(max(x["after"]["forget_acc"] for x in sweep_rows("p4s120"))),
         *[len(seed_kept[v]) for v in ("p4s120seed1", "p4s120seed2")],
         r.span([a for v in seed_kept for a in seed_kept[v]], r.f2)),
        ("eraser from prototypes (or from {} real images of the forgotten cells plus prototypes of the rest)",
         r.load("deep_sweep.json")["n_evidence"]),
        ("leaves the binary probe at {} and the 10-class probe recall at {}",
         r.span([sweep[p, v]["probe_bal_raw"][0] for p in ("global", "domain-specific") for v in ("deep", "deep+evidence")]),
         r.span([sweep[p, v]["probe_recall"][0] for p in ("global", "domain-specific") for v in ("deep", "deep+evidence")],
                r.f2)),
        ("With about {} real images of every cell it reaches the probe targets (global {}, worst {}; domain-specific {}, "
         "worst {}), at the price of {}-{} % zero-shot left", k,
         *[r.f3(v) for p in ("global", "domain-specific") for v in sweep[p, f"deep+every-cell-{k}"]["probe_bal_raw"]],
         f"{100 * zs[0]:.0f}", f"{100 * zs[1]:.0f}"),
        ("The default sends the domain to one sink class: {} in every domain",
         r.f3(ms("time_ratio.json", "single", "domain", "multimodal")["forget_after_worst"])),
        ("the fitted reference only dips to {} by losing {} retain points on average",
         r.span([s["forget_after_mean"] for s in dom]), r.span([s["retain_drop_mean"] for s in dom], r.f1)),
        ("(text method on every one of the {} cells: forget {} mean / {} worst, `unlearning.json`), and the prototypes "
         "are what complete it ({} / {})", text_ds["runs"], r.f3(text_ds["forget_after_mean"]),
         r.f3(text_ds["forget_after_worst"]), r.f3(u["domain-specific"]["forget_after_mean"]),
         r.f3(u["domain-specific"]["forget_after_worst"])),
        ("still reads the forgotten cells with balanced accuracy {} in all three paradigms",
         r.span([a["probe_balanced_acc"] for a in quick.values()], r.f2)),
        ("({} s for a 10 x 4 class request against 60 s;", f"{vitb['edit_seconds']:.0f}"),
        ("Text edits ({} s at 10 x 4, {} s at 345 x 6)", r.f2(run("edit_cost_text_law.json", 40)["edit_seconds"]),
         f"{run('edit_cost_text_law.json', 2070)['edit_seconds']:.0f}"),
        ("it reaches its own criterion on {} of {} classes, {} of {} cells and {} domain, in {} steps",
         sum(conv["global"]), len(conv["global"]), sum(conv["domain-specific"]), len(conv["domain-specific"]),
         "every" if all(conv["domain"]) else f"{sum(conv['domain'])} of {len(conv['domain'])}",
         r.span([x["optimizer_steps_kept"] for x in done], str)),
        ("(global {}x, domain-specific {}x, whole domains {}x the edit time",
         *[f"{ratio[p]['time_ratio']:.1f}" for p in ("global", "domain-specific", "domain")]),
    ]

def _prose_robustness(r):
    comp = r.load("composition.json")
    runs = {x["chain"]: x for x in comp["runs"] if "refused" not in x}
    kind = {k: "global" if "forget_domains" not in q else "domain" if "forget_classes" not in q else "domain-specific"
            for k, q in comp["requests"].items()}
    heart = lambda chain: next(q for q in runs[chain]["requests"] if q["request"] == "S")["worst_forget_acc"]
    sx = runs["S,Sx"]
    # chains refused for stacking a whole-domain edit with another edit that moves image features
    stacked = [x for x in runs.values() if x.get("would_refuse") and "domain" in [kind[k] for k in x["chain"].split(",")]
               and sum(kind[k] != "global" for k in x["chain"].split(",")) >= 2]
    order = r.deep_research("exp8_order.json")["rows"]
    back = [x["zs_forget"] for x in order if x["paradigm"] == "domain" and x["variant"] in ("pre", "post", "pre-free")]
    cls, dom = sx["worst_retain_cell"]
    return [
        ("(heart in sketches after chain G,S: {}, after S,G: {})", r.f2(heart("G,S")), r.f2(heart("S,G"))),
        ("(measured, chain S,Sx of `benchmarks/results/composition.json` run with `--unchecked`: {} in {}{} lost {} points)",
         cls, dom, "es" if dom.endswith(("s", "sh", "ch")) else "s", f"{sx['worst_retain_drop']:.0f}"),
        ("refused: measured losing one retained cell by {} points in every order",
         r.span([x["worst_retain_drop"] for x in stacked], lambda v: f"{v:.0f}")),
        ("(measured: zero-shot on the domain back to {} data-free or with real images of every cell, `benchmarks/results/deep_research/exp8_order.json`)",
         r.span(back, r.f2)),
    ]


def _prose_readme(r):
    robust = r.load("robustness.json")
    ds = next(x for x in robust["robustness"] if x["kind"] == "domain-specific" and x["condition"].startswith("default"))
    pareto = {(s["paradigm"], s["method"]): s for s in r.load("pareto.json")["summary"]}
    glance = r.load("pareto.json")
    one_image = 100 / glance["n_per_cell"]
    mm = [pareto[p, "multimodal"] for p in ("global", "domain-specific")]
    lost = round(max(s["retain_drop_worst"] for s in mm) / one_image)
    cov = r.load("coverage.json")["summary"]
    assert cov["editable"] == cov["built"]  # "all of them edit, fold, restore and export"
    steps = [x["optimizer_steps_kept"] for f in ("time_ratio.json", "time_ratio_ds.json") for x in r.load(f)["runs"]
             if x["method"] == "finetune" and x["converged"]]
    return [
        ("{:.0f} s of demo in `benchmarks/results/demo_steps30.json`", r.load("demo_steps30.json")["seconds"]),
        ("Of the {} open_clip configs, {} build", cov["configs"], cov["built"]),
        ("forgets in {}-{} steps", min(steps), max(steps)),
        ("0-4, {} of {} edits meet them all", ds["runs_meeting_targets"], ds["runs"]),
        ("20 images per cell (one image is {:.0f} points of a cell)", one_image),
        ("with at most {} lost in a retained cell here", "one image" if lost == 1 else WORDS.get(lost, str(lost)) + " images"),
        ("each of the {} classes globally, {} domain-specific cells (one per class) and each of the {} domains",
         pareto["global", "multimodal"]["requests"], pareto["domain-specific", "multimodal"]["requests"],
         pareto["domain", "multimodal"]["requests"]),
    ]


def _prose_fewer_steps(r):
    """The prose under "Fewer image-steps" (results page), from fewer_steps*.json and edit_cost_vitb_warm.json."""
    def by(name):
        return {(x["kind"], x["condition"].rsplit("-t", 1)[0]): x for x in r.load(name)["robustness"]}
    a, b, c = by("fewer_steps.json"), by("fewer_steps_rejected.json"), by("fewer_steps_held_out.json")
    ok = lambda t, kind, v: f"{t[kind, v]['runs_meeting_targets']}/{t[kind, v]['runs']}"  # noqa: E731
    steps = lambda t, kind, v: t[kind, v]["image_steps_mean"]  # noqa: E731
    cut = lambda t, v, ref="default": f"{100 * (1 - steps(t, 'global', v) / steps(t, 'global', ref)):.0f}"  # noqa: E731
    ds, dom, pairs = "domain-specific", "domain", "domain (several)"
    vit = {x["proto_start"]: x for x in r.load("edit_cost_vitb_warm.json")["runs"] if not x["warm"]}
    image_steps = lambda run: run["stats"]["image"]["prototype_image_steps"]  # noqa: E731
    return [
        ("global {}, domain-specific {} against {}, several classes globally {}, several classes in several domains "
         "{} as without", ok(a, "global", "warm"), ok(a, ds, "warm"), ok(a, ds, "default"),
         ok(a, "global (several)", "warm"), ok(a, "domain-specific (several)", "warm")),
        ("with {} % fewer image-steps per run ({:,.0f} against {:,.0f}; edit time {} s against {} s",
         cut(a, "warm"), steps(a, "global", "warm"), steps(a, "global", "default"),
         r.f2(a["global", "warm"]["edit_seconds_mean"]), r.f2(a["global", "default"]["edit_seconds_mean"])),
        ("the worst forgotten cell of a domain-specific request is higher ({} against {})",
         r.f2(a[ds, "warm"]["forget_cell_worst"]), r.f2(a[ds, "default"]["forget_cell_worst"])),
        ("costs the same classes in their other domains more ({} against {} points)",
         r.f1(a["domain-specific (several)", "warm"]["same_class_worst"]),
         r.f1(a["domain-specific (several)", "default"]["same_class_worst"])),
        ("on whole domains it loses targets ({} runs, pairs {}, against {} and {})",
         ok(a, dom, "warm"), ok(a, pairs, "warm"), ok(a, dom, "default"), ok(a, pairs, "default")),
        ("A stop per cell cut class requests' image-steps by {} % and lost whole domains ({}, pairs {} at seeds 0-2 "
         "against {} and {})", cut(b, "cellstop"), ok(b, dom, "cellstop"), ok(b, pairs, "cellstop"),
         ok(b, dom, "default"), ok(b, pairs, "default")),
        ("twice the learning rate costs more image-steps on class requests ({:,.0f} against {:,.0f}) and loses whole "
         "domains ({}, pairs {}), though it met more domain-specific targets ({} against {}",
         steps(b, "global", "lr2x"), steps(b, "global", "default"), ok(b, dom, "lr2x"), ok(b, pairs, "lr2x"),
         ok(b, ds, "lr2x"), ok(b, ds, "default")),
        ("half the steps at that rate lost most whole-domain runs ({}, pairs {})", ok(b, dom, "lr2x-half"),
         ok(b, pairs, "lr2x-half")),
        ("(domain-specific {} against {}, global {} as before;", ok(c, ds, "lr2x"), ok(c, ds, "default"),
         ok(c, "global", "lr2x")),
        ("the warm start takes the 10 x 4 class request from {} s to {} s cold ({:,} against {:,} image-steps)",
         f"{vit['noise']['edit_seconds']:.0f}", f"{vit['class']['edit_seconds']:.0f}",
         image_steps(vit["class"]), image_steps(vit["noise"])),
        ("no image is ever classified (mean prototype cosine {})", r.f2(vit["noise"]["stats"]["image"]["prototype_cos"])),
        ("The opt-in warm start cuts the image-steps by {} % here",
         f"{100 * (1 - image_steps(vit['class']) / image_steps(vit['noise'])):.0f}"),
    ]


PROSE = {"README.md": _prose_readme, "how-it-works.md": _prose_how_it_works, "research-notes.md": _prose_research_notes,
         "deep-mode.md": _prose_deep_mode, "results.md": lambda r: _prose_results(r) + _prose_fewer_steps(r),
         "robustness.md": _prose_robustness}


@pytest.mark.parametrize("page", sorted(PROSE))
def test_numbers_in_docs_prose_match_their_json(page):
    """Every measured number in the prose of these pages, rendered from its JSON as the page writes it."""
    text = " ".join((ROOT / page if page == "README.md" else DOCS / page).read_text().split())
    missing = []
    for template, *values in PROSE[page](_render_module()):
        expected = template.format(*values)
        if expected not in text:
            missing.append(expected)
    assert not missing, f"{page}: these sentences do not match their JSON:\n" + "\n".join(missing)
