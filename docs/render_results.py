"""Render the result tables of README.md and docs/*.md from benchmarks/results/*.json.

Every table of measured numbers in the README and the docs pages sits between two markers::

    <!-- BEGIN generated NAME (python docs/render_results.py) -->
    ...
    <!-- END generated NAME -->

and this script rewrites what lies between them from the JSON files, so the numbers cannot drift
from their sources. Usage (from the repository root)::

    python docs/render_results.py            # rewrite every generated block in place
    python docs/render_results.py --check    # exit 1 and print a diff where a page differs

``tests/test_docs.py`` runs the check. Each block names its JSON source(s) under the table; the
command that reproduces each file is quoted in the page's text.
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- BEGIN generated (?P<name>[\w-]+) \(python docs/render_results.py\) -->\n)(?P<body>.*?)"
                   r"(<!-- END generated (?P=name) -->)", re.S)


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def f3(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def f2(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def f1(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def span(values, fmt=f3) -> str:
    """'0.999-1.000', or one number when they are all equal."""
    values = list(values)
    lo, hi = fmt(min(values)), fmt(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def source(*files: str) -> str:
    return "Source: " + ", ".join(f"`benchmarks/results/{f}`" for f in files) + "."


def summary_row(name: str, set_: str, paradigm: str, method: str) -> dict:
    for s in load(name)["summary"]:
        if (s["set"], s["paradigm"], s["method"]) == (set_, paradigm, method):
            return s
    raise KeyError(f"{name}: no summary row {set_} / {paradigm} / {method}")


def _names(describe: str) -> str:
    """'global: forget classes ['circle'] in every domain ...' -> 'circle'."""
    found = re.findall(r"\[([^\]]*)\]", describe)
    parts = [", ".join(x.strip(" '\"") for x in f.split(",")) for f in found[:2]]
    return " in ".join(parts) if len(parts) == 2 else parts[0]


# ---------------------------------------------------------------------------------------------------------------
# The unlearning benchmark (benchmarks/unlearning.py)

QUALITY_ROWS = [  # (file, set, paradigm, method)
    ("unlearning.json", "single", "global", "text"),
    ("unlearning.json", "single", "global", "regularized"),
    ("unlearning.json", "single", "global", "multimodal"),
    ("time_ratio.json", "single", "global", "finetune"),
    ("unlearning.json", "single", "domain-specific", "text"),
    ("unlearning.json", "single", "domain-specific", "regularized"),
    ("unlearning.json", "single", "domain-specific", "multimodal"),
    ("time_ratio_ds.json", "single", "domain-specific", "finetune"),
    ("unlearning.json", "single", "domain", "text"),
    ("unlearning.json", "single", "domain", "regularized"),
    ("time_ratio.json", "single", "domain", "multimodal"),
    ("time_ratio.json", "single", "domain", "finetune"),
    ("unlearning.json", "multi", "domain-specific", "text"),
    ("unlearning.json", "multi", "domain-specific", "multimodal"),
    ("time_ratio.json", "multi", "global", "multimodal"),
    ("time_ratio.json", "multi", "domain", "multimodal"),
    ("time_ratio.json", "composed", "global", "multimodal"),
]
MULTI_LABEL = {("multi", "domain-specific"): "domain-specific (star, heart x sketch, cartoon)",
               ("multi", "global"): "global (triangle, moon, hexagon)",
               ("multi", "domain"): "domain (sketch, painting)",
               ("composed", "global"): "global (circle, then cross)"}


def render_quality() -> str:
    rows = []
    for name, set_, paradigm, method in QUALITY_ROWS:
        s = summary_row(name, set_, paradigm, method)
        seconds = f2(s["edit_seconds_mean"])
        if s.get("converged"):
            seconds += f" (criterion reached on {sum(s['converged'])} of {len(s['converged'])})"
        many = s["runs"] > 1
        rows.append([set_, MULTI_LABEL.get((set_, paradigm), paradigm),
                     f"**{method}**" if method == "multimodal" and set_ == "single" else method, s["runs"],
                     f"{f3(s['forget_after_mean'])} / {f3(s['forget_after_worst'])}" if many else f3(s["forget_after_mean"]),
                     f"{f2(s['retain_drop_mean'])} / {f2(s['retain_drop_worst'])}" if many else f2(s["retain_drop_mean"]),
                     (f"{f2(s['same_class_drop_mean'])} / {f2(s['same_class_drop_worst'])}" if many else
                      f2(s["same_class_drop_mean"])) if s["same_class_drop_mean"] is not None else "-",
                     f2(s["unrelated_drop_worst"]), seconds, f"`{name}`"])
    return table(["requests", "paradigm", "method", "runs", "forget after (mean / worst)",
                  "retain drop (mean / worst)", "same class, other domains: drop (mean / worst)",
                  "colour drop (worst)", "edit s (mean)", "source"], rows) + "\n\n" + source(
        "unlearning.json", "time_ratio.json", "time_ratio_ds.json")


GLANCE_METHODS = {"text": "library: text (data-free)", "multimodal": "**library: multimodal (default, data-free)**",
                  "deep": "library: deep (real images)", "finetune": "fine-tuning baseline (Kravets & Namboodiri)",
                  "task-negation": "task negation (Ilharco et al.)", "leace": "LEACE (concept-erasure package)",
                  "library-eraser": "library eraser (real images)"}
GLANCE_PARADIGMS = {"global": "global", "domain-specific": "domain-specific", "domain": "whole domain"}


def render_glance() -> str:
    """The README's one table: every method on every request of benchmarks/pareto.py, one row per paradigm and
    method (means over the requests, worst = the worst cell of any request), all from one result."""
    d = load("pareto.json")
    rows = []
    for s in d["summary"]:
        what = f"{GLANCE_PARADIGMS[s['paradigm']]} ({s['requests']})"
        if s.get("refused"):
            rows.append([what, GLANCE_METHODS[s["method"]], "refused", "", "", "", "", "", "", "", "", ""])
            continue
        steps = s["relearn_steps"]
        relearn = f"> {d['relearn_steps']}" if steps is None else (
            str(steps) if steps == s["relearn_steps_max"] else f"{steps}-{s['relearn_steps_max']}")
        same = "-" if s["same_drop_mean"] is None else f"{s['same_drop_mean']:.1f} ({s['same_drop_worst']:.0f})"
        rows.append([what, GLANCE_METHODS[s["method"]], f"{s['forget_mean']:.3f} ({s['forget_worst']:.2f})",
                     f"{s['retain_drop_mean']:.1f} ({s['retain_drop_worst']:.0f})", same, f"{s['probe_norm']:.2f}",
                     relearn, f"{s['images']:.0f}", f"{s['seconds']:.1f}",
                     f"{s['own_criterion_met']}/{s['requests']}", f"{s['quality_met']}/{s['requests']}",
                     "*" if s.get("pareto") else ""])
    return table(["paradigm (requests)", "method", "forget accuracy: mean (worst cell)",
                  "retain drop, points: mean (worst cell)", "same class, other domains: drop (worst)",
                  "probe (normalised; chance 0.5)", "relearning steps to 0.5", "real images", "seconds",
                  "own criterion met", "library quality met", "Pareto"], rows) + "\n\n" + source("pareto.json")


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _cell(describe: str) -> str:
    """"... forget classes ['heart'] in domains ['cartoon'] ..." -> 'heart in cartoons'."""
    cls, dom = _names(describe).split(" in ")
    return f"{cls} in {dom}{'es' if dom.endswith(('s', 'sh', 'ch')) else 's'}"


def _ratios(name: str, paradigm: str) -> str:
    """Baseline time to criterion / cold edit time, where the baseline reached its criterion."""
    runs = [r for r in load(name)["runs"] if r["paradigm"] == paradigm and r["set"] == "single"]
    edit = {r["forget"]: r for r in runs if r["method"] == "multimodal"}
    done = [r for r in runs if r["method"] == "finetune" and r["converged"]]
    per = [r["edit_seconds"] / edit[r["forget"]]["edit_seconds"] for r in done]
    total = summary_row(name, "single", paradigm, "finetune")["time_ratio"]
    return (f"**{total:.1f}x** over the {len(done)} where the baseline reaches its criterion ({min(per):.1f}x to "
            f"{max(per):.1f}x each; {span([r['edit_seconds'] for r in done], f1)} s to criterion against "
            f"{span([edit[r['forget']]['edit_seconds'] for r in done], f1)} s edits)"), total


def render_targets() -> str:
    """results.md: the library defaults (multimodal) against the targets; targets as text, the rest measured."""
    u = {(s["set"], s["paradigm"]): s for s in load("unlearning.json")["summary"] if s["method"] == "multimodal"}
    tr = {(s["set"], s["paradigm"]): s for s in load("time_ratio.json")["summary"] if s["method"] == "multimodal"}
    n = load("unlearning.json")["n_per_cell"]
    rows = []

    g = u["single", "global"]
    ok = g["forget_after_mean"] <= 0.01 and g["forget_after_worst"] <= 0.03 and g["retain_drop_worst"] <= 0.5
    rows.append(["global", "forget <= 0.01 mean, <= 0.03 worst; retain drop <= 0.5",
                 f"{f3(g['forget_after_mean'])} / {f3(g['forget_after_worst'])} (every class); retain drop "
                 f"{f2(g['retain_drop_mean'])} / {f2(g['retain_drop_worst'])}", _yes(ok)])

    d = u["single", "domain-specific"]
    runs = [r for r in load("unlearning.json")["runs"] if (r["set"], r["paradigm"], r["method"]) ==
            ("single", "domain-specific", "multimodal")]
    worst = [r for r in runs if r["forget_acc_after"] == d["forget_after_worst"]]
    p8, p8m = summary_row("unlearning_ds_p8.json", "single", "domain-specific", "multimodal"), \
        summary_row("unlearning_ds_p8.json", "multi", "domain-specific", "multimodal")
    p8w = [r for r in load("unlearning_ds_p8.json")["runs"] if r["set"] == "single"
           and r["forget_acc_after"] == p8["forget_after_worst"]]
    drops = d["retain_drop_worst"] <= 2 and d["same_class_drop_worst"] <= 2
    rows.append(["domain-specific, every cell", "forget <= 0.02 mean, <= 0.05 worst; retain and same-class drops <= 2",
                 f"{f3(d['forget_after_mean'])} / **{f3(d['forget_after_worst'])}** (`unlearning.json`) "
                 f"({', '.join(_cell(r['forget']) for r in worst)}: {round(d['forget_after_worst'] * n)} of {n} "
                 f"images each); retain {f2(d['retain_drop_mean'])} / {f2(d['retain_drop_worst'])}; same-class "
                 f"{f2(d['same_class_drop_mean'])} / {f2(d['same_class_drop_worst'])}",
                 f"mean {_yes(d['forget_after_mean'] <= 0.02)}, drops {_yes(drops)}, worst cell "
                 f"{_yes(d['forget_after_worst'] <= 0.05)}; with 8 prototypes per cell (`unlearning_ds_p8.json`) "
                 f"{f3(p8['forget_after_mean'])} / {f3(p8['forget_after_worst'])} "
                 f"({', '.join(_cell(r['forget']) for r in p8w)} still), retain worst {f2(p8['retain_drop_worst'])} "
                 f"(and on the several-class request: same-class drop {f1(p8m['same_class_drop_mean'])}, retain "
                 f"{f2(p8m['retain_drop_mean'])}), with twice the prototypes per cell: not adopted"])

    w = tr["single", "domain"]
    proto = [r for r in load("proto_sweep.json")["rows"] if "domain" in r["paradigm"]
             and re.fullmatch(r"p4s30(seed\d+)?", r["variant"])]
    pf = max(r[k]["forget_acc"] for r in proto for k in ("after", "test_after"))
    pr = max(100 * (r[b]["retain_acc"] - r[a]["retain_acc"]) for r in proto
             for b, a in (("before", "after"), ("test_before", "test_after")))
    every = "in every domain" if w["forget_after_mean"] == w["forget_after_worst"] else \
        f"mean, {f3(w['forget_after_worst'])} worst"
    rows.append(["whole domain", "forget <= 0.10 (chance); retain drop <= 1",
                 f"{f3(w['forget_after_mean'])} {every}; retain drop {f2(w['retain_drop_mean'])} / "
                 f"{f2(w['retain_drop_worst'])} (and at seeds 1, 2 and on every pair of domains: forget <= {f3(pf)}, "
                 f"retain <= {f2(pr)}, [prototype settings](research-notes.md#prototype-settings-per-paradigm))",
                 _yes(round(w["forget_after_worst"], 3) <= 0.10 and w["retain_drop_worst"] <= 1) +
                 " (below chance: out of reach for a linear layer here, see "
                 "[where the edit acts](how-it-works.md#where-the-edit-acts))"])

    mg, mgc, md, ms = u["multi", "global"], tr["multi", "global"], tr["multi", "domain"], u["multi", "domain-specific"]
    sweep = [r for r in load("proto_sweep.json")["rows"] if r["paradigm"] == "multi-global" and r["variant"] == "p4s120"]
    sv, st = (max(100 * (r[b]["retain_acc"] - r[a]["retain_acc"]) for r in sweep)
              for b, a in (("before", "after"), ("test_before", "test_after")))
    ok_g = mgc["retain_drop_worst"] <= 0.5 and mgc["forget_after_worst"] <= 0.03
    ok_d = round(md["forget_after_worst"], 3) <= 0.10 and md["retain_drop_worst"] <= 1
    ok_s = ms["forget_after_worst"] <= 0.05 and ms["retain_drop_worst"] <= 2 and ms["same_class_drop_worst"] <= 2
    rows.append(["multi-class", "the single-request targets of their paradigm",
                 f"global 3 classes: {f3(mg['forget_after_mean'])}, retain {f2(mg['retain_drop_mean'])} "
                 f"(`unlearning.json`), **{f2(mgc['retain_drop_mean'])}** cold (`time_ratio.json`; the {len(sweep)} "
                 f"several-class global requests of the prototype sweep: val worst {f2(sv)}, test worst {f2(st)}); "
                 f"2 domains: {f3(md['forget_after_mean'])}, retain {f2(md['retain_drop_mean'])}; star and heart in "
                 f"sketches and cartoons: forget {f3(ms['forget_after_mean'])}, retain {f2(ms['retain_drop_mean'])}, "
                 f"but the same classes in photos and paintings lose **{f1(ms['same_class_drop_mean'])} points**",
                 f"global 3 classes (cold): {_yes(ok_g)}; 2 domains: {_yes(ok_d)}; star and heart: {_yes(ok_s)}"])

    c, cc = u["composed", "global"], tr["composed", "global"]
    rows.append(["composed", "the same", f"circle then cross: {f3(c['forget_after_mean'])} "
                 f"({f3(cc['forget_after_mean'])} cold, `time_ratio.json`), retain {f2(c['retain_drop_mean'])}",
                 _yes(max(c["forget_after_worst"], cc["forget_after_worst"]) <= 0.03 and c["retain_drop_worst"] <= 0.5)])

    colour = max(s["unrelated_drop_worst"] for f in ("unlearning.json", "time_ratio.json", "time_ratio_ds.json")
                 for s in load(f)["summary"] if s["method"] == "multimodal")
    rows.append(["unrelated (colour)", "drop <= 1 point everywhere",
                 f"{f2(colour)} in every multimodal run" if colour == 0 else f"worst {f2(colour)}", _yes(colour <= 1)])

    (gt, gr), (dt, dr), (st_, sr) = (_ratios("time_ratio.json", "global"), _ratios("time_ratio.json", "domain"),
                                     _ratios("time_ratio_ds.json", "domain-specific"))
    rows.append(["edit time vs the tuned fine-tuning baseline's time to criterion, same run",
                 ">= 50x global and domain-specific, >= 10x whole domain",
                 f"`time_ratio.json`, cold edits: global classes {gt}; whole domains {dt}; domain-specific cells "
                 f"(`time_ratio_ds.json`) {st_}", _yes(gr >= 50 and sr >= 50 and dr >= 10)])
    return table(["paradigm", "target", "measured", "met"], rows) + "\n\n" + source(
        "unlearning.json", "time_ratio.json", "time_ratio_ds.json", "unlearning_ds_p8.json", "proto_sweep.json")


def render_baseline_per_request() -> str:
    runs = load("time_ratio.json")["runs"]
    edits = {r["forget"]: r for r in runs if r["method"] == "multimodal" and r["set"] == "single"}
    rows = []
    for r in runs:
        if r["method"] != "finetune":
            continue
        e = edits[r["forget"]]
        name = _names(r["forget"]) + (" (whole domain)" if r["paradigm"] == "domain" else "")
        crit = "reached" if r["converged"] else "**not reached**"
        ratio = f"{r['edit_seconds'] / e['edit_seconds']:.1f}x" if r["converged"] else "not quoted"
        rows.append([name, f"{crit} (synthetic {r['synthetic_acc_after']:.2f}), steps {r['optimizer_steps_kept']}, "
                           f"{f1(r['edit_seconds'])} s", f3(r["forget_acc_after"]),
                     f"{f3(r['retain_acc_before'])} -> {f3(r['retain_acc_after'])}", f3(r["unrelated_acc_after"]),
                     f3(r["audit_after"]["probe_balanced_acc"]),
                     f"{f3(e['forget_acc_after'])}, retain {f3(e['retain_acc_after'])}, {f2(e['edit_seconds'])} s", ratio])
    return table(["request", "baseline: criterion, steps, time", "forget", "retain", "colour", "probe (bal. acc.)",
                  "library edit (cold)", "ratio"], rows) + "\n\n" + source("time_ratio.json")


AUDIT_COLUMNS = [("zeroshot_acc",), ("paraphrase_acc",), ("retrieval_precision",),
                 ("probe_balanced_acc", "probe_balanced_acc_normalised"), ("probe_recall", "probe_retain_acc"),
                 ("knn_recall",), ("probe_balanced_acc@pooled", "probe_balanced_acc@block3")]


def render_audit_quick() -> str:
    rows = []
    for r in load("unlearning_quick_audit.json")["runs"]:
        b, a = r["audit_before"], r["audit_after"]
        rows.append([_names(r["forget"]) + f" ({r['paradigm']})"] +
                    [" / ".join(f"{b[k]:.2f} -> {a[k]:.2f}" for k in cols) for cols in AUDIT_COLUMNS])
    return table(["forget", "zero-shot", "paraphrase", "retrieval", "probe bal. acc raw / normalised",
                  "probe recall / retain acc", "knn recall", "probe bal. acc @pooled / @block3"], rows) + \
        "\n\n" + source("unlearning_quick_audit.json")


def render_alpha() -> str:
    rows = []
    for c in load("alpha_sweep.json")["curves"]:
        for p in c["points"]:
            rows.append([c["paradigm"], p["alpha"], f3(p["forget_acc"]), f3(p["retain_acc"]), f3(p["unrelated_acc"]),
                         f3(p["probe_balanced_acc"])])
    return table(["paradigm", "alpha", "forget", "retain", "colour", "probe bal. acc"], rows) + "\n\n" + \
        source("alpha_sweep.json")


def render_margin() -> str:
    rows = []
    for m in ["0.5", "0.75", "1.0"]:
        s = load(f"margin_{m}.json")["summary"][0]
        rows.append([m, s["runs"], f"{f3(s['forget_after_mean'])} / {f3(s['forget_after_worst'])}",
                     f"{f2(s['retain_drop_mean'])} / {f2(s['retain_drop_worst'])}", f2(s["same_class_drop_mean"]),
                     f2(s["edit_seconds_mean"])])
    return table(["margin", "requests", "forget after (mean / worst)", "retain drop (mean / worst)",
                  "same-class drop (mean)", "edit s (mean)"], rows) + "\n\n" + \
        source("margin_0.5.json", "margin_0.75.json", "margin_1.0.json")


# ---------------------------------------------------------------------------------------------------------------
# Embedded model, overhead, coverage, cost

def render_zero_shot() -> str:
    z = load("zero_shot.json")
    d = z["per_domain"]
    rows = [["zero-shot accuracy", f3(z["accuracy"])],
            ["per domain: " + " / ".join(d), " / ".join(f3(v) for v in d.values())],
            ["colour accuracy (the unrelated task)", f3(z["colour_accuracy"])],
            ["images/s through `zeroshot.evaluate` vs a bare open_clip loop (same run)",
             f"{f3(z['speed_ratio'])} ({z['images_per_second']:.0f} vs {z['plain_images_per_second']:.0f} img/s)"]]
    return table(["metric", f"value ({z['n_images']} held-out {z['split']} images)"], rows) + "\n\n" + \
        source("zero_shot.json")


def render_lightning_overhead() -> str:
    o = load("lightning_overhead.json")
    rows = [["plain open_clip loop", f"{o['plain_images_per_second']:.0f}", ""],
            ["`Trainer.test` with `CLIPUnlearning`", f"{o['trainer_images_per_second']:.0f}",
             f"trainer / plain {o['trainer_over_plain']:.3f} (target >= {o['targets']['trainer_over_plain']})"],
            ["injected edit (parametrized projection)", f"{o['injected_images_per_second']:.0f}",
             f"injected / folded {o['injected_over_folded']:.3f} (target >= {o['targets']['injected_over_folded']})"],
            ["folded edit", f"{o['folded_images_per_second']:.0f}", ""]]
    return table(["variant", "images/s", "ratio"], rows) + "\n\n" + source("lightning_overhead.json")


def render_coverage() -> str:
    c = load("coverage.json")
    s = c["summary"]
    v = c["versions"]
    rows = [[fam, x["configs"], x["ok"], x["text_tower"]] for fam, x in sorted(s["by_family"].items())]
    head = (f"Of the {s['configs']} configs of `open_clip.list_models()` (open_clip {v['open_clip']}, timm "
            f"{v['timm']}, transformers {v['transformers']}), {s['built']} build without a download and "
            f"{s['editable']} of them edit, fold, restore and export; the {len(s['not_built'])} that do not build "
            "have a Hugging Face text tower whose config must be downloaded.\n\n")
    return head + table(["family (image edit site)", "configs", "edit / fold / restore / export",
                         "text tower editable"], rows) + "\n\n" + source("coverage.json")


def render_coverage_instances() -> str:
    rows = []
    for f in load("coverage.json")["families"]:
        rows.append([f["family"], "+".join(f["towers"]), f"{f['injected_vs_folded']:.1e}",
                     "yes" if f["restore_bit_exact"] else "**no**",
                     f"{f['export_reload_vs_injected']:.1e} ({'+'.join(f['export_towers'])})",
                     f"{f['alpha0_vs_original']:.1e}"])
    return table(["instance", "towers edited", "injected vs folded", "restore bit-exact",
                  "exported, reloaded without this library, vs injected (towers)", "alpha = 0 vs unedited"], rows) + \
        "\n\n" + source("coverage.json")


def _size(r) -> str:
    return f"{r['classes']} x {r['domains']}"


def render_edit_cost() -> str:
    rows = []
    for name in ["edit_cost_vitb_10x4.json", "edit_cost_text_law.json", "edit_cost_mm_law.json",
                 "edit_cost_345x6_domain.json"]:
        runs = load(name)["runs"]
        groups = defaultdict(dict)
        for r in runs:
            groups[(r["arch"], r["classes"], r["domains"], r["paradigm"], r["method"])]["warm" if r["warm"] else "cold"] = r
        for (arch, _, _, paradigm, method), g in groups.items():
            if name == "edit_cost_vitb_10x4.json" and method == "text":
                continue  # measured again after the weights check was made cheap: edit_cost_text_law.json
            cold, warm = g.get("cold"), g.get("warm")
            r = cold or warm
            cold_s = f2(cold["edit_seconds"]) if cold else "-"
            if cold and cold["stages"].get("prototypes", 0) > 1:
                cold_s += f" (prototypes {f1(cold['stages']['prototypes'])})"
            rows.append([arch, _size(r), paradigm, f"{method}, {r['proto_steps']} steps" if method == "multimodal"
                         and paradigm == "domain" else method, cold_s, f2(warm["edit_seconds"]) if warm else "-",
                         f"{max(x['peak_rss_mb'] for x in g.values()):.0f}", f"`{name}`"])
    return table(["model", "size", "request", "method", "cold s", "warm s", "peak RSS MB", "source"], rows)


def render_edit_cost_steps() -> str:
    old = {(r["cells"], r["warm"]): r for r in load("edit_cost_mm_law_steps60.json")["runs"]}
    rows = []
    for r in load("edit_cost_mm_law_steps30.json")["runs"]:
        if r["warm"]:
            continue
        warm = next(x for x in load("edit_cost_mm_law_steps30.json")["runs"] if x["cells"] == r["cells"] and x["warm"])
        o = old.get((r["cells"], False))
        rows.append([r["arch"], _size(r), r["paradigm"], f2(o["edit_seconds"]) if o else "-", f2(r["edit_seconds"]),
                     f2(warm["edit_seconds"]), f"{r['peak_rss_mb']:.0f}",
                     f"{o['edit_seconds'] / r['edit_seconds']:.2f}x" if o else "-"])
    return table(["model", "size", "request", "60 steps: cold s", "30 steps: cold s", "30 steps: warm s",
                  "30 steps: peak RSS MB", "speed-up"], rows) + "\n\n" + \
        source("edit_cost_mm_law_steps30.json", "edit_cost_mm_law_steps60.json")


def render_fingerprint_cost() -> str:
    f = load("fingerprint_cost.json")
    rows = [[r["arch"], f1(r["params_m"]), f2(r["fingerprint_s"]), f2(r["check_float32_s"]), f2(r["check_bfloat16_s"])]
            for r in f["rows"]]
    return table(["model", "parameters (M)", f"take the digest, s ({f['threads']} thread)", "check, float32 s",
                  "check, bfloat16 s"], rows) + "\n\n" + source("fingerprint_cost.json")


def render_demo() -> str:
    rows = []
    for name in ["demo_steps30.json", "demo_steps60.json"]:
        d = load(name)
        for p in d["paradigms"]:
            rows.append([p["paradigm"], _names(p["describe"]) if p["paradigm"] != "domain" else
                         "every class in " + _names(p["describe"]),
                         f"{f3(p['forget_acc_before'])} -> {f3(p['forget_acc_after'])}",
                         f"{f3(p['retain_acc_before'])} -> {f3(p['retain_acc_after'])}", f1(p["seconds"]),
                         f"`{name}` ({f1(d['seconds'])} s in all)"])
    return table(["paradigm", "request", "forget accuracy", "retain accuracy", "edit s", "run"], rows)


# ---------------------------------------------------------------------------------------------------------------
# Sweeps: their JSON carries the table its script printed

def _sweep_table(name: str, key: str) -> str:
    return load(name)[key].replace("| nan |", "| - |").strip() + "\n\n" + source(name)


PROTO_GROUPS = {"domain": "whole domains", "multi-domain": "whole domains", "global": "global, one class",
                "multi-global": "global, several classes"}
PROTO_DEFAULTS = {("whole domains", 4, 30): "default", ("whole domains", 4, 60): "old default",
                  ("global, one class", 4, 120): "default", ("global, several classes", 4, 120): "default"}


def render_proto_summary() -> str:
    """proto_sweep.json per (request group, prototypes x steps): forget mean over requests and seeds, worst over
    them; image-steps = cells synthesised x prototypes x steps (whole domains: every cell; global: the classes'
    cells in every domain, so 'up to' the largest request)."""
    groups = defaultdict(list)
    for r in load("proto_sweep.json")["rows"]:
        m = re.fullmatch(r"p(\d+)s(\d+)(?:seed(\d+))?", r["variant"])
        groups[(PROTO_GROUPS[r["paradigm"]], int(m.group(1)), int(m.group(2)))].append((int(m.group(3) or 0), r))
    order = list(dict.fromkeys(PROTO_GROUPS.values()))
    n_domains = len({d for r in load("proto_sweep.json")["rows"] for _, d in r["forget"]})
    rows, seen = [], set()
    for (group, n, s), runs in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), -kv[0][1] * kv[0][2],
                                                                      -kv[0][1])):
        def worst(split, key):
            return max(100 * (r[f"{split}before"][key] - r[f"{split}after"][key]) for _, r in runs)
        cells = [r["forget"] for _, r in runs]
        if group == "whole domains":
            steps = f"{len({c for f in cells for c, _ in f}) * n_domains * n * s:,}"
        else:
            steps = f"up to {max(len({c for c, _ in f}) for f in cells) * n_domains * n * s:,}"
        label = group
        if group not in seen:
            label += f" ({len({str(f) for f in cells})})"
            seen.add(group)
        setting = f"{n} x {s}"
        if (group, n, s) in PROTO_DEFAULTS:
            setting = f"**{setting} ({PROTO_DEFAULTS[group, n, s]})**"
        fa = {split: [r[f"{split}after"]["forget_acc"] for _, r in runs] for split in ("", "test_")}
        rows.append([label, setting, ", ".join(str(k) for k in sorted({k for k, _ in runs})),
                     f"{f3(sum(fa['']) / len(fa['']))} / {f3(max(fa['']))}", f2(worst("", "retain_acc")),
                     f"{f3(sum(fa['test_']) / len(fa['test_']))} / {f3(max(fa['test_']))}",
                     f2(worst("test_", "retain_acc")), steps])
    return table(["requests", "prototypes x steps", "seeds", "val: forget mean / worst", "val: retain drop worst",
                  "test: forget mean / worst", "test: retain drop worst", "image-steps per request"], rows) + \
        "\n\nMean and worst over the requests and seeds; drops in points. " + source("proto_sweep.json")


def render_linear_bound_interaction() -> str:
    rows = [[r["site"], f"{100 * r['class']:.1f}%", f"{100 * r['domain']:.1f}%", f"{100 * r['interaction']:.2f}%"]
            for r in load("linear_bound.json")["interaction"]]
    return table(["site", "class", "domain", "interaction"], rows) + "\n\n" + source("linear_bound.json")


def render_linear_bound_fitted() -> str:
    rows = []
    for s in load("linear_bound.json")["summary"]:
        rows.append([s["paradigm"], s["runs"], s["method"].split("@ ")[1],
                     f"{f3(s['forget_after_mean'])} / {f3(s['forget_after_worst'])}",
                     f"{f2(s['retain_drop_mean'])} / {f2(s['retain_drop_worst'])}",
                     f2(s["same_class_drop_mean"]) if s["paradigm"] == "domain-specific" else "-"])
    return table(["paradigm", "requests", "site", "forget after (mean / worst)", "retain drop (mean / worst)",
                  "same-class drop (mean)"], rows) + "\n\n" + source("linear_bound.json")


def render_design_sweep() -> str:
    rows = load("design_sweep.json")["rows"]
    cols = list(dict.fromkeys((r["paradigm"], _names(r["forget"])) for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    cell = {(r["variant"], r["paradigm"], _names(r["forget"])): r for r in rows}
    out = []
    for v in variants:
        line = [v]
        for c in cols:
            r = cell.get((v, *c))
            if r is None:
                line.append("-")
                continue
            b, a = r["before"], r["after"]
            line.append(f"{a['forget_acc']:.2f} / {100 * (b['retain_acc'] - a['retain_acc']):+.1f} / "
                        f"{100 * (b['unrelated_acc'] - a['unrelated_acc']):+.1f}")
        out.append(line)
    return table(["variant"] + [f"{p} {n}" for p, n in cols], out) + "\n\n" + source("design_sweep.json")


def _finetune_rows(name: str):
    for r in load(name)["rows"]:
        yield r, ("yes" if r["converged"] else "no") + f" (synthetic {r['synthetic_acc_after']:.2f})"


def render_finetune_sweep() -> str:
    rows = [[r["lr"], r["steps_per_epoch"], crit, f"{r['steps']} ({r['epochs']}, {r['rollbacks']})",
             f"{r['seconds_to_criterion']:.0f} s", f3(r["after"]["forget_acc"]),
             f"{f3(r['before']['retain_acc'])} -> {f3(r['after']['retain_acc'])}",
             f"{f3(r['before']['unrelated_acc'])} -> {f3(r['after']['unrelated_acc'])}"]
            for r, crit in _finetune_rows("finetune_sweep.json")]
    return table(["lr", "steps / epoch", "criterion met", "steps (epochs, roll-backs)", "time to criterion or end",
                  "forget (val)", "retain (val)", "colour (val)"], rows) + "\n\n" + source("finetune_sweep.json")


def render_finetune_sweep_all() -> str:
    rows = [[r["class"], f"{r['lr']:g} x {r['steps_per_epoch']}", crit, r["steps"], f3(r["after"]["forget_acc"]),
             f"{f3(r['before']['retain_acc'])} -> {f3(r['after']['retain_acc'])}"]
            for r, crit in _finetune_rows("finetune_sweep_all.json")]
    return table(["class", "recipe", "criterion", "steps", "forget (val)", "retain (val)"], rows) + "\n\n" + \
        source("finetune_sweep_all.json")


DEEP_COLUMNS = ["zs_forget", "probe_bal_raw", "probe_bal_norm", "probe_recall", "zs_retain", "colour",
                "probe_retain_acc", "zs_same", "probe_recall_same"]


def render_deep_sweep() -> str:
    rows = []
    for s in load("deep_sweep.json")["summary"]:
        line = [s["paradigm"], s["variant"], s["runs"]]
        for k in DEEP_COLUMNS:
            v = s.get(k)
            if v is None:
                line.append("-")
            elif k in ("zs_forget", "probe_bal_raw", "probe_bal_norm", "probe_recall"):
                line.append(f"{v[0]:.3f} ({v[1]:.3f})")
            else:
                line.append(f"{v[0]:.2f} ({v[1]:.2f})")
        rows.append(line)
    return table(["paradigm", "variant", "runs", "zero-shot forget", "probe bal. raw", "probe bal. normalised",
                  "probe recall", "zero-shot retain drop", "colour drop", "probe retain acc drop",
                  "same class: zero-shot drop", "same class: probe recall drop"], rows) + \
        "\n\nMean (worst) over the requests; drops in points against the unedited model. " + source("deep_sweep.json")


def render_deep_model() -> str:
    rows = []
    for s in load("deep_model.json")["summary"]:
        rows.append([s["paradigm"], s["variant"], f"{s['zs_forget'][0]:.3f} ({s['zs_forget'][1]:.3f})",
                     f"{s['probe_bal_raw'][0]:.3f} / {s['probe_bal_norm'][0]:.3f}", f3(s["probe_recall"][0]),
                     f3(s["zs_retain"][0]), f3(s["colour"][0]), f"{f1(s['edit_seconds'][0])} ({f1(s['edit_seconds'][1])})"])
    return table(["paradigm", "mode", "zero-shot forget, mean (worst)", "probe bal. raw / normalised",
                  "probe recall", "retained zero-shot", "colour", "edit s (cold), mean (worst)"], rows) + \
        "\n\n" + source("deep_model.json")


def deep_research(name: str) -> dict:
    return json.loads((RESULTS / "deep_research" / name).read_text())


# exp11_audit.py 80 1 audits the first request of each class paradigm; its log cuts the request's description
# before the domain, so the names are written here.
EXP11_REQUEST = {"global": "circle, global", "domain-specific": "circle in photos"}
EXP11_EDIT = {"shallow": "shallow", "deep+every-cell": "deep, 80 of every cell",
              "deep+every-cell+text": "the same + text tower"}


def render_deep_audit() -> str:
    rows, edited = [], []
    for r in deep_research("exp11_audit.json")["rows"]:
        if r["variant"] == "unedited":
            continue
        first = not edited or edited[-1]["paradigm"] != r["paradigm"]
        edited.append(r)
        rows.append([EXP11_REQUEST[r["paradigm"]] if first else "", EXP11_EDIT[r["variant"]],
                     f"{f3(r['forget'])} / {f3(r['paraphrase_acc'])}", f3(r["retrieval_precision"]),
                     f"{f3(r['probe_balanced_acc'])} / {f3(r['probe_balanced_acc_normalised'])}",
                     f3(r["probe_recall"]), f3(r["knn_recall"]),
                     f"{f3(r['probe_balanced_acc@pooled'])} / {f3(r['probe_balanced_acc@block3'])}"])
    return table(["request", "edit", "zero-shot / paraphrase forget", "retrieval", "probe bal. raw / normalised",
                  "probe recall", "knn recall", "probe bal. @pooled / @block3"], rows) + \
        f"\n\nRetained zero-shot {span(r['retain'] for r in edited)} and colour {span(r['colour'] for r in edited)} " \
        "in every row. Source: `benchmarks/results/deep_research/exp11_audit.json` (`python docs/logs_to_json.py`: " \
        "the lines of `exp11_audit.log`, converted, nothing rerun)."


def _verdict(checks: list[tuple]) -> str:
    """checks: (column, ok) or (column, part, ok). 'yes' / 'no' when all agree, else per column."""
    by_col = defaultdict(list)
    for c in checks:
        by_col[c[0]].append(c[1:] if len(c) == 3 else ("", c[1]))
    if all(ok for parts in by_col.values() for _, ok in parts):
        return "yes"
    if not any(ok for parts in by_col.values() for _, ok in parts):
        return "no"
    out = []
    for col, parts in by_col.items():
        if all(ok for _, ok in parts) or not any(ok for _, ok in parts):
            out.append(f"{col}: {'yes' if parts[0][1] else 'no'}")
        else:
            out.append(f"{col}: " + ", ".join(f"{part} {'yes' if ok else 'no'}" for part, ok in parts))
    return "; ".join(out)


def render_deep_targets() -> str:
    """The deep mode against its targets: the eraser alone (deep_sweep.json) unless a cell says composed
    (deep_model.json); paraphrases from the audit (exp11), the text tower (exp9), 320 images (exp6)."""
    sweep = {(s["paradigm"], s["variant"]): s for s in load("deep_sweep.json")["summary"]}
    model = {(s["paradigm"], s["variant"]): s for s in load("deep_model.json")["summary"]}
    audit = {(r["paradigm"], r["variant"]): r for r in deep_research("exp11_audit.json")["rows"]}
    text = [r for r in deep_research("exp9_text_tower.json")["rows"]
            if r["paradigm"] == "global" and r["variant"] == "deep-every+text"]
    k = load("deep_model.json")["every_cell"][0]
    every = f"deep+every-cell-{k}"
    cols = [("data-free", "deep"), ("5 per forgotten cell", "deep+evidence"), (f"{k} of every cell", every)]
    n320 = [r["probe_bal_raw"] for r in deep_research("exp6_evidence_count_ds_domain.json")["rows"]
            if r["paradigm"] == "domain-specific" and r["variant"] == "real-train-320"]

    def mw(s, key, fmt=f3):
        return f"{fmt(s[key][0])} ({fmt(s[key][1])})"

    def row(target, cells, checks):
        return [target, *cells, _verdict(checks)]

    rows = []
    g = {name: sweep["global", v] for name, v in cols}
    rows.append(row("global probe balanced acc (raw) <= 0.60",
                    [mw(g[n], "probe_bal_raw") for n, _ in cols[:2]] +
                    [f"{mw(g[cols[2][0]], 'probe_bal_raw')}; composed {mw(model['global', every], 'probe_bal_raw')}"],
                    [(n, g[n]["probe_bal_raw"][0] <= 0.60) for n, _ in cols]))
    rows.append(row("global 10-class probe recall <= 0.20", [f3(g[n]["probe_recall"][0]) for n, _ in cols],
                    [(n, g[n]["probe_recall"][0] <= 0.20) for n, _ in cols]))
    gm = {name: model["global", v] for name, v in cols}
    para, para_text = audit["global", "deep+every-cell"], audit["global", "deep+every-cell+text"]
    rows.append(row("global zero-shot and paraphrase forget <= 0.01 (composed)",
                    [f"zero-shot {mw(gm[n], 'zs_forget')} (paraphrase not measured)" for n, _ in cols[:2]] +
                    [f"zero-shot {mw(gm[cols[2][0]], 'zs_forget')}; with the text tower "
                     f"{' / '.join(f3(r['zs_forget']) for r in text)} ({', '.join(r['request'] for r in text)}); "
                     f"paraphrase {f3(para['paraphrase_acc'])}, text tower {f3(para_text['paraphrase_acc'])} "
                     f"({para['request']}, audit above)"],
                    [(n, gm[n]["zs_forget"][1] <= 0.01) for n, _ in cols]))
    rows.append(row("retained zero-shot drop <= 1 pt / probe drop <= 2 / colour drop <= 1",
                    [" / ".join(f2(g[n][key][1]) for key in ("zs_retain", "probe_retain_acc", "colour")) + " worst"
                     + (f" (zero-shot mean {f2(g[n]['zs_retain'][0])})" if n == cols[2][0] else "") for n, _ in cols],
                    [(n, g[n]["zs_retain"][1] <= 1 and g[n]["probe_retain_acc"][1] <= 2 and g[n]["colour"][1] <= 1)
                     for n, _ in cols]))
    d = {name: sweep["domain-specific", v] for name, v in cols}
    rows.append(row("domain-specific probe balanced acc <= 0.65",
                    [mw(d[n], "probe_bal_raw") for n, _ in cols[:2]] +
                    [f"{mw(d[cols[2][0]], 'probe_bal_raw')}; normalised {mw(d[cols[2][0]], 'probe_bal_norm')}; "
                     f"320 of every cell: {f3(sum(n320) / len(n320))} ({f3(max(n320))})"],
                    [(n, w, d[n]["probe_bal_raw"][i] <= 0.65) for n, _ in cols
                     for i, w in enumerate(("mean", "worst"))]))
    rows.append(row("same class other domains: probe recall drop within 5 pts, zero-shot within 2",
                    [f"{f2(d[n]['probe_recall_same'][1])} / {f2(d[n]['zs_same'][1])} worst" +
                     (f" (zero-shot mean {f2(d[n]['zs_same'][0])})" if n == cols[2][0] else "") for n, _ in cols],
                    [(n, what, d[n][key][1] <= lim) for n, _ in cols
                     for what, key, lim in (("probe", "probe_recall_same", 5), ("zero-shot", "zs_same", 2))]))
    rows.append(["whole domain zero-shot forget <= 0.05", "refused", "refused", "refused",
                 "no (the surface edit forgets a domain to chance; the deep mode conflicts with it, above)"])
    times = []
    for name, v in cols:
        deep = [model[p, v]["edit_seconds"][0] for p in ("global", "domain-specific")]
        ratio = [model[p, v]["edit_seconds"][0] / model[p, "shallow"]["edit_seconds"][0]
                 for p in ("global", "domain-specific")]
        times.append((name, deep, ratio))
    shallow = [model[p, "shallow"]["edit_seconds"][0] for p in ("global", "domain-specific")]
    rows.append(row("deep edit time <= 3x shallow (cold)",
                    [f"{span(deep, f1)} s ({span(ratio, f1)}x)" + (f" vs {span(shallow, f1)} s shallow" if i == 0 else "")
                     for i, (_, deep, ratio) in enumerate(times)],
                    [(n, max(ratio) <= 3) for n, _, ratio in times]))
    return table(["target", *[n for n, _ in cols], "met"], rows) + "\n\nMean (worst) over the requests, drops in " \
        "points. Source: `benchmarks/results/deep_sweep.json` (the eraser alone), `benchmarks/results/deep_model.json` " \
        "(composed, times), `benchmarks/results/deep_research/exp11_audit.json`, `exp9_text_tower.json`, " \
        "`exp6_evidence_count_ds_domain.json`."


def render_exp6() -> str:
    rows = defaultdict(dict)
    for name in ["exp6_evidence_count_global.json", "exp6_evidence_count_ds_domain.json"]:
        data = json.loads((RESULTS / "deep_research" / name).read_text())
        groups = defaultdict(list)
        for r in data["rows"]:
            groups[(r["paradigm"], r["variant"])].append(r["probe_bal_raw"])
        for (paradigm, variant), vals in groups.items():
            m = re.fullmatch(r"(?:real-train-(\d+))|(?:ev-(\d+)\+proto-rest)", variant)
            if m:
                kind, n = ("every-cell", m.group(1)) if m.group(1) else ("forgotten-real", m.group(2))
                rows[int(n)][(kind, paradigm)] = f"{sum(vals) / len(vals):.3f} ({max(vals):.3f})"
    cols = [(k, p) for k in ("every-cell", "forgotten-real") for p in ("global", "domain-specific", "domain")]
    out = [[n] + [rows[n].get(c, "-") for c in cols] for n in sorted(rows)]
    return table(["real images per cell"] + [f"{'every cell real' if k == 'every-cell' else 'forgotten cells real'}"
                                             f": {p}" for k, p in cols], out) + "\n\nBinary probe balanced accuracy "\
        "(raw output), mean (worst). Source: `benchmarks/results/deep_research/exp6_evidence_count_global.json`, " \
        "`benchmarks/results/deep_research/exp6_evidence_count_ds_domain.json`."


def render_composition() -> str:
    """benchmarks/composition.py: each request alone, then chains of requests composed on one model."""
    d = load("composition.json")
    rows = []
    for r in d["runs"]:
        if "refused" in r:
            rows.append([r["chain"], f"refused at {r['refused_at']}: {r['refused'].split(':')[0]}", "-", "-"])
            continue
        forget = "; ".join(f"{q['request']} {f2(q['forget_mean'])} ({f2(q['worst_forget_acc'])} "
                           f"{'/'.join(q['worst_forget_cell'])})" for q in r["requests"])
        rows.append([r["chain"], forget, f"{f2(r['retain_drop_mean'])} / {f1(r['worst_retain_drop'])} "
                     f"({'/'.join(r['worst_retain_cell'])})", ("met" if r["met"] else "NOT met")
                     + (" (refused by default)" if r.get("would_refuse") else "")])
    runs = [r for r in d["runs"] if "refused" not in r]
    chains = [r for r in runs if "," in r["chain"]]
    taken = [r for r in chains if not r.get("would_refuse")]
    refused = [r for r in chains if r.get("would_refuse")]
    alone_failing = [r["chain"] for r in runs if "," not in r["chain"] and not r["met"]]
    note = (f"Chains the library accepts: {sum(r['met'] for r in taken)} of {len(taken)} meet every target; "
            f"the others contain a request that fails alone too ({', '.join(alone_failing) or 'none'} fail alone). "
            f"Chains it refuses by default, run anyway (`--unchecked`): {sum(r['met'] for r in refused)} of "
            f"{len(refused)} meet the targets.")
    return table(["chain", "each request: forget mean (worst cell)", "retained: drop mean / worst cell (points)",
                  "targets"], rows) + "\n\n" + note + "\n\n" + source("composition.json")


def render_composition_seeds() -> str:
    """composition_seeds.json: the chains the library accepts at other edit seeds, with seed 0 from
    composition.json: per chain, the seeds at which it meets every target, and its worst run."""
    runs = [r for r in load("composition.json")["runs"] if "," in r["chain"] and "refused" not in r
            and not r.get("would_refuse")]
    runs += [r for r in load("composition_seeds.json")["runs"] if "refused" not in r]
    rows = []
    for chain in dict.fromkeys(r["chain"] for r in runs):
        rs = [r for r in runs if r["chain"] == chain]
        worst = max(rs, key=lambda r: r["worst_retain_drop"])
        forget = max((q["worst_forget_acc"], q["request"], r.get("seed", 0)) for r in rs for q in r["requests"]
                     if q["paradigm"] != "domain")  if any(q["paradigm"] != "domain" for q in rs[0]["requests"]) else None
        met = [str(r.get("seed", 0)) for r in rs if r["met"]]
        rows.append([chain, f"{len(met)} of {len(rs)}" + (": " + ", ".join(met) if met else ""),
                     "-" if forget is None else f"{f2(forget[0])} ({forget[1]}, seed {forget[2]})",
                     f"{f1(worst['worst_retain_drop'])} ({'/'.join(worst['worst_retain_cell'])}, seed "
                     f"{worst.get('seed', 0)})"])
    return table(["chain", "seeds meeting every target", "worst forgotten cell of a class request (seed)",
                  "worst retained cell drop, points (seed)"], rows) + "\n\n" + source("composition.json",
                                                                                   "composition_seeds.json")


def render_ddp_scaling() -> str:
    """benchmarks/ddp_scaling.py: one process against two (gloo, one thread each), every repeat."""
    d = load("ddp_scaling.json")
    by = defaultdict(dict)
    for r in d["runs"]:
        by[r["repeat"]][r["procs"]] = r
    rows = [[k, f"{f2(v[1]['edit_seconds'])} ({f2(v[1]['cpu_seconds'])})",
             f"{f2(v[2]['edit_seconds'])} ({f2(max(v[2]['rank_cpu_seconds']))})", f3(v[2]["ratio"]),
             f3(v[2]["cpu_ratio"]), f"{f2(v[1]['cpu_share'])} / {f2(v[2]['cpu_share'])}",
             "yes" if v[2]["maps_identical"] else "no"] for k, v in sorted(by.items())]
    return table(["repeat", "1 x 1 thread: edit s (CPU s)", "2 x 1 thread: edit s (busiest rank's CPU s)",
                  "wall ratio", "CPU-time ratio", "cores the run got (1 / 2 procs)", "maps identical"], rows) \
        + f"\n\nMedian wall ratio {f3(d['ratio_median'])} (target {d['target_ratio']}: " \
        + ("met" if d["ratio_ok"] else "NOT met") + "). " + source("ddp_scaling.json")


def render_demo_worst() -> str:
    """The demo at 50 test images per cell, with its worst cells (demo_worst_cells.json)."""
    d = load("demo_worst_cells.json")
    rows = []
    for p in d["paradigms"]:
        wf, wr = p["worst_forget_cell"], p["worst_retain_cell"]
        rows.append([p["paradigm"], f"{f3(p['forget_acc_before'])} -> {f3(p['forget_acc_after'])}",
                     f"{f3(p['retain_acc_before'])} -> {f3(p['retain_acc_after'])}",
                     f"{'/'.join(wf['cell'])} {f2(wf['acc'])}",
                     f"{'/'.join(wr['cell'])} {f2(wr['acc_before'])} -> {f2(wr['acc'])} ({f1(-wr['drop_points'] + 0.0)})"])
    return table(["paradigm", "forget accuracy", "retain accuracy", "worst forgotten cell",
                  "worst retained cell (change, points)"], rows) + f"\n\n{d['n_per_cell']} test images per cell. " \
        + source("demo_worst_cells.json")


def _pareto(name: str) -> str:
    """A benchmarks/pareto.py result, formatted by the benchmark's own table function."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.pareto import fmt_table
    d = load(name)
    return fmt_table(d["summary"], d["relearn_steps"]) + "\n\n" + source(name)


def render_failing_cells() -> str:
    """robustness.json: the requests that miss a target at some seed (default settings), with the seeds and
    what each misses (the worst retained cell, or the forgotten cells' accuracy)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.self_check import label
    d = load("robustness.json")
    rows = []
    for s in d["robustness"]:
        if not s["condition"].startswith("default"):
            continue
        per = defaultdict(dict)
        for f in s["failing_runs"]:
            per[f["request"]][f["seed"]] = f
        per = {request: list(fs.values()) for request, fs in per.items()}
        for request, fs in per.items():
            runs = {r["seed"]: r for r in d["rows"] if r["variant"] == s["condition"].split(",")[0]
                    and label(r["forget"]) == request}
            forget = [runs[f["seed"]]["forget_acc"] for f in fs]
            worst = max(fs, key=lambda f: f["worst_retain_cell"]["drop_points"])["worst_retain_cell"]
            rows.append([s["kind"], request, f"{len(fs)} of {len(runs)}: " + ", ".join(str(f["seed"]) for f in fs),
                         ", ".join(sorted({m for f in fs for m in f["misses"]})), span(forget, f2),
                         f"{'/'.join(worst['cell'])} {-worst['drop_points']:+.0f}" if worst["drop_points"] > 0 else "none"])
    return table(["request kind", "request", "seeds that miss a target", "targets missed", "forget accuracy (those seeds)",
                  "worst retained cell (points)"], rows) + "\n\n" + source("robustness.json")


RENDERERS = {
    "glance": render_glance,
    "quality": render_quality,
    "targets": render_targets,
    "baseline-per-request": render_baseline_per_request,
    "audit-quick": render_audit_quick,
    "alpha": render_alpha,
    "margin": render_margin,
    "zero-shot": render_zero_shot,
    "lightning-overhead": render_lightning_overhead,
    "coverage": render_coverage,
    "coverage-instances": render_coverage_instances,
    "edit-cost": render_edit_cost,
    "edit-cost-steps": render_edit_cost_steps,
    "fingerprint-cost": render_fingerprint_cost,
    "demo": render_demo,
    "composition": render_composition,
    "composition-seeds": render_composition_seeds,
    "pareto-full": lambda: _pareto("pareto.json"),
    "pareto-quick": lambda: _pareto("pareto_quick.json"),
    "pareto-erasers": lambda: _pareto("pareto_erasers.json"),
    "pareto-library": lambda: _pareto("pareto_library.json"),
    "demo-worst": render_demo_worst,
    "self-check": lambda: _sweep_table("robustness.json", "table"),
    "self-check-mechanisms": lambda: _sweep_table("self_check.json", "table"),
    "robustness-sweep": lambda: _sweep_table("robustness.json", "robustness_table"),
    "failing-cells": render_failing_cells,
    "ds-mechanisms": lambda: _sweep_table("ds_cell_mechanisms.json", "robustness_table"),
    "fewer-steps": lambda: _sweep_table("fewer_steps.json", "robustness_table"),
    "fewer-steps-rejected": lambda: _sweep_table("fewer_steps_rejected.json", "robustness_table"),
    "ddp-scaling": render_ddp_scaling,
    "cell-sweep": lambda: _sweep_table("cell_sweep.json", "table"),
    "cell-sweep-test": lambda: _sweep_table("cell_sweep.json", "table_test"),
    "cell-sweep-multi": lambda: _sweep_table("cell_sweep_multi.json", "table"),
    "cell-sweep-multi-test": lambda: _sweep_table("cell_sweep_multi.json", "table_test"),
    "proto-summary": render_proto_summary,
    "proto-sweep": lambda: _sweep_table("proto_sweep.json", "table"),
    "proto-sweep-test": lambda: _sweep_table("proto_sweep.json", "table_test"),
    "deep-cells": lambda: _sweep_table("deep_cells.json", "table"),
    "deep-cells-test": lambda: _sweep_table("deep_cells.json", "table_test"),
    "linear-bound-interaction": render_linear_bound_interaction,
    "linear-bound-fitted": render_linear_bound_fitted,
    "design-sweep": render_design_sweep,
    "finetune-sweep": render_finetune_sweep,
    "finetune-sweep-all": render_finetune_sweep_all,
    "deep-sweep": render_deep_sweep,
    "deep-model": render_deep_model,
    "exp6": render_exp6,
    "deep-audit": render_deep_audit,
    "deep-targets": render_deep_targets,
}


def render_page(text: str, path: Path) -> str:
    def repl(m: re.Match) -> str:
        name = m.group("name")
        if name not in RENDERERS:
            raise KeyError(f"{path}: unknown generated block {name!r}")
        return m.group(1) + RENDERERS[name]().rstrip() + "\n" + m.group(4)
    return BLOCK.sub(repl, text)


def check(pages=PAGES) -> list[str]:
    """Return a unified diff per page whose generated blocks differ from what the JSON renders."""
    diffs = []
    for path in pages:
        text = path.read_text()
        new = render_page(text, path)
        if new != text:
            diffs.append("".join(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                      str(path.relative_to(ROOT)), "rendered")))
    return diffs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if a page differs")
    args = ap.parse_args(argv)
    if args.check:
        diffs = check()
        sys.stdout.write("\n".join(diffs))
        return 1 if diffs else 0
    for path in PAGES:
        text = path.read_text()
        new = render_page(text, path)
        if new != text:
            path.write_text(new)
            print(f"rendered {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
