"""A GPU check anyone can run: the demo, every whole-domain request at edit seeds 0-2, the demo's
requests on fp16 / bf16 models, and the edit cost of ViT-B-32 and ViT-L-14 (random init) at
10 x 4 and 345 x 6, in one process, within a time budget (no step starts after 240 s by default,
so that the whole check ends within 5 minutes), writing one JSON.

    python benchmarks/device_check.py --json benchmarks/results/device_check.json

On a machine without CUDA it refuses (exit code 2) unless ``--allow-cpu`` is given, which only
exists to smoke-test this script with tiny settings (``--n-per-cell 1 --seeds 0 --archs world-clip
--sizes 3x2 --method text --no-check``): its numbers are not a device check.

Sections (in this order; a section, or a run inside one, that would start after the budget is spent
is skipped and listed under ``skipped``; the JSON is rewritten after every section):

- ``demo``: the demo's three requests on the embedded model at ``--n-per-cell`` test images per
  cell (library defaults, the self-check on unless ``--no-check``): forget / retain accuracy, worst
  cells, the check.
- ``whole_domains``: every domain at every edit seed, each in a fresh cache (no prototype reused from
  another request: the result cannot depend on what ran before): the same numbers.
- ``precision``: the demo's requests on the embedded model cast to float16 and bfloat16.
- ``edit_cost``: per architecture and size, a cold edit (fresh cache) and the same edit warm, of a
  global request (the first class in every domain) and, at 10 x 4 only, a whole domain: seconds and
  peak GPU memory.

``--autocast`` runs every section with bf16 autocast in the prototype synthesis and ``--max-images N``
caps the images per synthesis batch (:func:`lightning_unlearn.prototypes.options`; recorded under
``synthesis``): a run with ``--autocast`` beside one without is the measurement that decides whether
autocast can be the default on CUDA.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _import_library() -> None:
    """The library, imported once the device is known (a refusal answers at once)."""
    global label_space, ForgetRequest, cache, restore_, unlearn_, QUICK_REQUESTS, rendered_batches, load_clip
    global request_accuracy, worst_cells
    from benchmarks.edit_cost import label_space
    from lightning_unlearn import ForgetRequest, cache, restore_, unlearn_
    from lightning_unlearn.data import QUICK_REQUESTS, rendered_batches
    from lightning_unlearn.load import load_clip
    from lightning_unlearn.zeroshot import request_accuracy, worst_cells

SECTIONS = ("demo", "whole_domains", "precision", "edit_cost")
REFUSAL = ("device_check: no CUDA device here (torch.cuda.is_available() is False with torch {torch}): this "
           "script checks the library on a GPU. Run it on a machine with one (or pass --allow-cpu only to "
           "smoke-test the script with tiny settings; its numbers are then not a device check)")


class Budget:
    """Seconds since the start, and whether another step may start."""

    def __init__(self, seconds: float):
        self.seconds, self.t0, self.skipped = seconds, time.perf_counter(), []

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def allows(self, what: str) -> bool:
        if self.elapsed < self.seconds:
            return True
        self.skipped.append(what)
        return False


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(lc, batches, request) -> tuple[dict, tuple]:
    """The request's accuracies on ``batches`` and the per-cell counts ``(correct, total)``."""
    out = request_accuracy(lc.model, lc, batches, request, cells=True)
    return out, out.pop("cells")


def edit_row(lc, batches, kw: dict, device: str, before=None, **overrides) -> dict:
    """One edit of ``kw`` on ``lc``: accuracies before / after on ``batches``, worst cells, the check."""
    request = ForgetRequest(lc.classnames, lc.domains, **kw)
    sb, counts_b = before if before is not None else measure(lc, batches, request)
    sync(device)
    t0 = time.perf_counter()
    try:
        u = unlearn_(lc.model, lc.tokenizer, request, progress=False, **overrides)
    except (ValueError, RuntimeError) as e:  # a config that cannot serve the request (e.g. text, whole domains)
        return {"request": request.describe(), "refused": str(e), "overrides": overrides}
    sync(device)
    wall = time.perf_counter() - t0
    try:
        sa, counts_a = measure(lc, batches, request)
    finally:
        restore_(lc.model)
    worst = worst_cells(*counts_a, request, before=counts_b)
    return {"request": request.describe(), "paradigm": request.paradigm, "overrides": overrides,
            "forget_acc_before": sb["forget_acc"], "forget_acc_after": sa["forget_acc"],
            "retain_acc_before": sb["retain_acc"], "retain_acc_after": sa["retain_acc"],
            "retain_drop_points": 100 * (sb["retain_acc"] - sa["retain_acc"]), **worst,
            "edit_seconds": round(u.seconds, 3), "wall_seconds": round(wall, 3), "ranks": u.ranks,
            "check": None if u.check is None else {k: v for k, v in u.check.to_dict().items() if k != "cells"}}


def section_demo(lc, batches, device, budget, overrides, precision: str | None = None) -> list[dict]:
    rows = []
    for paradigm, kw in QUICK_REQUESTS:
        if not budget.allows(f"{'precision ' + precision if precision else 'demo'}: {paradigm}"):
            break
        rows.append({"paradigm": paradigm} | edit_row(lc, batches, kw, device, **overrides))
        print(_line(rows[-1], precision or "demo"), flush=True)
    return rows


def section_whole_domains(lc, batches, device, budget, overrides, seeds, domains) -> list[dict]:
    rows = []
    for d in domains:
        before = None
        for seed in seeds:
            if not budget.allows(f"whole_domains: {d} seed {seed}"):
                return rows
            with cache.use(cache.Cache()):  # nothing from earlier requests: order cannot matter
                if before is None:
                    before = measure(lc, batches, ForgetRequest(lc.classnames, lc.domains, forget_domains=[d]))
                row = edit_row(lc, batches, {"forget_domains": [d]}, device, before=before,
                               **(overrides | {"seed": seed}))
            rows.append({"domain": d, "seed": seed} | row)
            print(_line(rows[-1], f"{d} s{seed}"), flush=True)
    return rows


def section_edit_cost(archs, sizes, device, budget, overrides) -> list[dict]:
    rows = []
    for arch in archs:
        for size in sizes:
            classes, domains = (int(v) for v in size.split("x"))
            names, doms = label_space(classes, domains)
            paradigms = [("global", {"forget_classes": names[:1]})] + (
                [("domain", {"forget_domains": doms[:1]})] if classes * domains <= 40 else [])
            for paradigm, kw in paradigms:
                if not budget.allows(f"edit_cost: {arch} {size} {paradigm}"):
                    return rows
                lc = load_clip(arch, device=device)
                request = ForgetRequest(names, doms, **kw)
                with cache.use(cache.Cache()):
                    for warm in (False, True):
                        if device.startswith("cuda"):
                            torch.cuda.reset_peak_memory_stats()
                        sync(device)
                        t0 = time.perf_counter()
                        try:
                            u = unlearn_(lc.model, lc.tokenizer, request, progress=False, **overrides)
                        except ValueError as e:  # a config that cannot serve the request (text, whole domains)
                            rows.append({"arch": arch, "size": size, "paradigm": paradigm, "refused": str(e)})
                            break
                        sync(device)
                        wall = time.perf_counter() - t0
                        restore_(lc.model)
                        rows.append({"arch": arch, "size": size, "classes": classes, "domains": domains,
                                     "paradigm": paradigm, "warm": warm, "edit_seconds": round(u.seconds, 3),
                                     "wall_seconds": round(wall, 3), "ranks": u.ranks,
                                     "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
                                     if device.startswith("cuda") else None})
                        print(f"edit_cost {arch} {size} {paradigm} {'warm' if warm else 'cold'} "
                              f"{u.seconds:.2f} s", flush=True)
                del lc
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
    return rows


def _line(r: dict, label: str) -> str:
    if "refused" in r:
        return f"{label:14s} {r['request'][:50]:50s} refused"
    wr, wf = r["worst_retain_cell"], r["worst_forget_cell"]
    chk = r.get("check")
    return (f"{label:14s} {r['request'][:50]:50s} forget {r['forget_acc_after']:.3f} (worst {'/'.join(wf['cell'])} "
            f"{wf['acc']:.2f}) retain drop {r['retain_drop_points']:+.2f} (worst {'/'.join(wr['cell'])} "
            f"{wr['drop_points']:+.1f}) check {'-' if chk is None else ('pass' if chk['passed'] else 'FAIL')} "
            f"{r['edit_seconds']:.2f} s")


def environment(device: str) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": device}
    if device.startswith("cuda"):
        env |= {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                "gpu_memory_gb": round(torch.cuda.get_device_properties(device).total_memory / 2 ** 30, 1)}
    return env


def run(args) -> dict:
    _import_library()
    budget = Budget(args.budget)
    overrides = {"method": args.method} if args.method else {}
    checked = overrides | {"check": not args.no_check}  # the edits whose quality is measured
    result = {"environment": environment(args.device), "budget_seconds": args.budget, "n_per_cell": args.n_per_cell,
              "seeds": args.seeds, "overrides": overrides, "sections": {}, "skipped": budget.skipped,
              "synthesis": {"autocast": args.autocast, "max_images": args.max_images}}

    def save():
        result["seconds"] = round(budget.elapsed, 1)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1, default=str))

    lc = batches = None
    if {"demo", "whole_domains", "precision"} & set(args.sections):
        lc = load_clip("embedded", device=args.device)
        batches = rendered_batches("test", args.n_per_cell, lc.preprocess)
    if "demo" in args.sections:
        result["sections"]["demo"] = section_demo(lc, batches, args.device, budget, checked)
        save()
    if "whole_domains" in args.sections:
        result["sections"]["whole_domains"] = section_whole_domains(
            lc, batches, args.device, budget, checked, args.seeds, args.domains or list(lc.domains))
        save()
    if "precision" in args.sections:
        out = {}
        for name in args.precisions:
            if not budget.allows(f"precision {name}"):
                break
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[name]
            low = load_clip("embedded", device=args.device)
            low.model.to(dtype)
            with cache.use(cache.Cache()):
                out[name] = section_demo(low, batches, args.device, budget, checked, precision=name)
            del low
        result["sections"]["precision"] = out
        save()
    if "edit_cost" in args.sections:
        result["sections"]["edit_cost"] = section_edit_cost(args.archs, args.sizes, args.device, budget, overrides)
        save()
    save()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget", type=float, default=240.0, help="seconds after which no further step starts (the "
                   "default leaves a minute for the step running then: the whole check within 5 minutes)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    p.add_argument("--n-per-cell", type=int, default=50)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--domains", default=None, help="comma list (default: every domain)")
    p.add_argument("--precisions", default="fp16,bf16")
    p.add_argument("--archs", default="ViT-B-32,ViT-L-14")
    p.add_argument("--sizes", default="10x4,345x6")
    p.add_argument("--method", default=None, help="UnlearnConfig method for every edit (default: the library's)")
    p.add_argument("--no-check", action="store_true", help="no self-check of the measured edits")
    p.add_argument("--allow-cpu", action="store_true", help="run without CUDA (smoke tests of this script only)")
    p.add_argument("--autocast", action="store_true",
                   help="bf16 autocast in the prototype synthesis (lightning_unlearn.prototypes.options): the same "
                        "sections with it, to set beside a run without")
    p.add_argument("--max-images", type=int, default=None, help="cap on images per synthesis batch on CUDA")
    args = p.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    bad = sorted(set(args.sections) - set(SECTIONS))
    if bad:
        p.error(f"--sections {bad}: not among {SECTIONS}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.domains = args.domains.split(",") if args.domains else None
    args.precisions = [s for s in args.precisions.split(",") if s]
    args.archs, args.sizes = args.archs.split(","), args.sizes.split(",")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        if not args.allow_cpu:
            print(REFUSAL.format(torch=torch.__version__), file=sys.stderr)
            return 2
        args.device = "cpu"
    from lightning_unlearn import prototypes
    with prototypes.options(autocast=args.autocast, max_images=args.max_images):
        result = run(args)
    print(f"wrote {args.json} ({result['seconds']} s; skipped: {result['skipped'] or 'nothing'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
