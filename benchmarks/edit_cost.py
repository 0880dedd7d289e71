"""Cost of one edit, cold and warm, per stage: ``unlearn_`` on a randomly initialised open_clip model on CPU.

    python benchmarks/edit_cost.py --json out/edit_cost.json                        # ViT-B-32, 10 x 4
    python benchmarks/edit_cost.py --json out/big.json --classes 345 --domains 6 --methods text
    python benchmarks/edit_cost.py --json out/law.json --sizes 10x4 50x6 100x6 --methods multimodal \
        --paradigms domain                                                           # growth law
    python benchmarks/edit_cost.py --json out/old.json --root /path/to/other/checkout  # same runs, other code
    python benchmarks/edit_cost.py --json out/gpu.json --device cuda --preset gpu       # the GPU table below

``--device cuda`` runs on the first CUDA device (refused with a message where torch sees none) and
records ``peak_gpu_mb`` (``torch.cuda.max_memory_allocated`` of each edit) and the GPU's name;
``--precisions fp16 bf16`` creates the model in those precisions; ``--autocast`` and
``--max-images N`` set :func:`lightning_unlearn.prototypes.options` (bf16 autocast in the synthesis,
images per synthesis batch on CUDA); ``--proto-start noise class`` runs every row with each prototype start
(``proto_start="class"``: the warm start). ``--preset gpu`` runs these rows (arch, size, paradigm, method,
precision): ViT-B-32 10x4 global text / global multimodal / whole domain multimodal; ViT-B-32 10x4
global multimodal in fp16 and bf16; ViT-L-14 10x4 global multimodal; ViT-B-32 345x6 global text /
domain-specific multimodal / whole domain multimodal. GPU targets (one H200-class GPU): ViT-B-32
345x6 whole domain multimodal cold <= 20 s, ViT-L-14 10x4 multimodal cold <= 5 s.

Label space: ``--classes`` class names (the 10 below, then "object 11", ...) x ``--domains``
domains (photo, sketch, cartoon, painting, clipart, infograph, ...). Requests (``--paradigms``):
global (forget the first class in every domain), domain-specific (the first class in the first
domain), domain (the whole first domain). Library defaults, only ``progress=False``.

Each (arch, size, paradigm, method) runs in a fresh subprocess: a cold edit (nothing cached), then
the edit is restored and the same request computed again, warm (prompt embeddings and prototypes
come from the in-memory cache). Each is one run in the JSON with ``arch``, ``method``,
``edit_seconds``, ``cpu_seconds`` (``time.process_time`` of the edit: all threads; with one thread,
what the edit costs when the cores are not shared), ``peak_rss_mb`` (``ru_maxrss`` of the process so far, model included),
``classes``, ``domains``, ``paradigm``, ``warm`` and ``stages`` ({stage: seconds}: prompt encoding,
prototype synthesis, solve, inject, other). With runs at >= 3 sizes the growth law
``seconds = a * cells^b`` is fitted per (method, paradigm, warm) and printed. Targets (2 CPU cores):
10 x 4: text <= 1 s, multimodal cold <= 60 s, warm <= 2 s; 345 x 6: global text <= 30 s, whole
domain multimodal cold <= 900 s, warm <= 10 s; peak RSS <= 3000 MB. The load average is recorded:
timings on a busy machine are upper bounds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLASSNAMES = ["dog", "cat", "horse", "elephant", "giraffe", "guitar", "house", "person", "car", "bird"]
DOMAINS = ["photo", "sketch", "cartoon", "painting", "clipart", "infograph", "quickdraw", "real"]
PARADIGMS = {"global": lambda c, d: {"forget_classes": c[:1]},
             "domain-specific": lambda c, d: {"forget_classes": c[:1], "forget_domains": d[:1]},
             "domain": lambda c, d: {"forget_domains": d[:1]}}
TARGETS = {"10x4": {"text": 1.0, "multimodal": 60.0, "warm": 2.0},
           "345x6": {"text": 30.0, "multimodal": 900.0, "warm": 10.0}, "peak_rss_mb": 3000.0}
#: cold-edit targets on one CUDA device, by (arch, size, paradigm, method)
GPU_TARGETS = {("ViT-B-32", "345x6", "domain", "multimodal"): 20.0, ("ViT-L-14", "10x4", "global", "multimodal"): 5.0}
#: --preset gpu: (arch, classes, domains, paradigm, method, precision)
GPU_PRESET = [("ViT-B-32", 10, 4, "global", "text", "fp32"), ("ViT-B-32", 10, 4, "global", "multimodal", "fp32"),
              ("ViT-B-32", 10, 4, "domain", "multimodal", "fp32"), ("ViT-B-32", 10, 4, "global", "multimodal", "fp16"),
              ("ViT-B-32", 10, 4, "global", "multimodal", "bf16"), ("ViT-L-14", 10, 4, "global", "multimodal", "fp32"),
              ("ViT-B-32", 345, 6, "global", "text", "fp32"), ("ViT-B-32", 345, 6, "domain-specific", "multimodal", "fp32"),
              ("ViT-B-32", 345, 6, "domain", "multimodal", "fp32")]
#: (module, function) -> stage; functions missing in a checkout are skipped
STAGES = [("lightning_unlearn.directions", "encode", "prompts"),
          ("lightning_unlearn.directions", "prototype_columns", "prototypes"),
          ("lightning_unlearn.prototypes", "synthesize", "prototypes"),
          ("lightning_unlearn.nullspace", "two_sided_map", "solve"),
          ("lightning_unlearn.nullspace", "regularized_edit", "solve"),
          ("lightning_unlearn.edit", "solve", "solve"),
          ("lightning_unlearn.edit", "inject_", "inject")]


def label_space(classes: int, domains: int) -> tuple[list[str], list[str]]:
    if not 1 <= domains <= len(DOMAINS) or classes < 2:
        raise SystemExit(f"--classes {classes} --domains {domains}: need >= 2 classes and 1..{len(DOMAINS)} domains")
    names = CLASSNAMES[:classes] + [f"object {i + 1}" for i in range(len(CLASSNAMES), classes)]
    return names, DOMAINS[:domains]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _instrument(clock: dict) -> None:
    """Wrap each stage function so that its (outermost) calls add their time to ``clock``."""
    import importlib
    depth = [0]
    for module, name, stage in STAGES:
        mod = importlib.import_module(module)
        fn = getattr(mod, name, None)
        if fn is None:
            continue

        def timed(*a, _fn=fn, _stage=stage, **kw):
            if depth[0]:
                return _fn(*a, **kw)
            depth[0] += 1
            t = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                depth[0] -= 1
                clock[_stage] = clock.get(_stage, 0.0) + time.perf_counter() - t
        setattr(mod, name, timed)
        for other in ("lightning_unlearn.directions", "lightning_unlearn.edit"):  # names imported elsewhere
            o = importlib.import_module(other)
            if getattr(o, name, None) is fn:
                setattr(o, name, timed)


def child(arch: str, method: str, paradigm: str, classes: int, domains: int, image_size: int | None,
          device: str = "cpu", precision: str = "fp32", autocast: bool = False,
          max_images: int | None = None, proto_start: str = "noise") -> list[dict]:
    """The cold and the warm run, in this (fresh) process."""
    import contextlib

    import open_clip
    import torch

    from lightning_unlearn import ForgetRequest, embedded, restore_, unlearn_

    if arch == embedded.MODEL_NAME:  # the embedded architecture (random init here) for smoke runs
        embedded.register()
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: torch {torch.__version__} sees no CUDA device")
    options = contextlib.nullcontext()
    if autocast or max_images is not None:
        from lightning_unlearn import prototypes
        if not hasattr(prototypes, "options"):
            raise SystemExit("--autocast / --max-images: this checkout's lightning_unlearn has no prototypes.options")
        options = prototypes.options(autocast=autocast, max_images=max_images)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = open_clip.create_model(arch, precision=precision, device=device,
                                   **({"force_image_size": image_size} if image_size else {})).eval()
    tokenizer = open_clip.get_tokenizer(arch)
    load_seconds = time.perf_counter() - t0
    names, doms = label_space(classes, domains)
    request = ForgetRequest(names, doms, **PARADIGMS[paradigm](names, doms))
    clock: dict = {}
    _instrument(clock)
    runs = []
    for warm in (False, True):
        if warm:
            restore_(model)
        clock.clear()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start, cpu = time.perf_counter(), time.process_time()
        with options:
            result = unlearn_(model, tokenizer, request, method=method, progress=False,
                              **({} if proto_start == "noise" else {"proto_start": proto_start}))
        if cuda:
            torch.cuda.synchronize()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        stages = {k: round(v, 3) for k, v in clock.items()}
        stages["other"] = round(seconds - sum(clock.values()), 3)
        size = model.visual.image_size
        runs.append({
            "arch": arch, "method": method, "edit_seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "classes": classes, "domains": domains, "cells": classes * domains, "paradigm": paradigm, "warm": warm,
            "stages": stages, "load_seconds": round(load_seconds, 3),
            "image_size": size[0] if isinstance(size, (tuple, list)) else size,
            "solver": result.config.solver, "n_prototypes": result.config.n_prototypes,
            "proto_steps": result.config.prototype_steps(paradigm), "ranks": result.ranks,
            "stats": {tower: dict(s) for tower, s in result.stats.items()},
            "n_forget_cells": len(request.forget_cells), "n_retain_cells": len(request.retain_cells),
            "device": device, "precision": precision, "autocast": autocast, "max_images": max_images,
            "proto_start": proto_start, "gpu": torch.cuda.get_device_name() if cuda else None,
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1) if cuda else None,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "open_clip": open_clip.__version__})
    return runs


def spawn(args, arch, method, paradigm, classes, domains, precision="fp32", proto_start="noise") -> list[dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", arch, method, paradigm, str(classes),
           str(domains), "--device", args.device, "--precisions", precision] + \
        (["--image-size", str(args.image_size)] if args.image_size else []) + (["--autocast"] if args.autocast else []) + \
        (["--max-images", str(args.max_images)] if args.max_images else []) + \
        ["--proto-start", proto_start]
    env = dict(os.environ, PYTHONPATH=str(args.root or ROOT))
    head = {"arch": arch, "method": method, "paradigm": paradigm, "classes": classes, "domains": domains,
            "cells": classes * domains, "device": args.device, "precision": precision, "proto_start": proto_start}
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return [head | {"warm": False, "error": f"timed out after {args.timeout} s"}]
    if out.returncode:
        return [head | {"warm": False, "error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]}]
    runs = json.loads(out.stdout.strip().splitlines()[-1])
    for r in runs:
        r["process_seconds"] = round(time.perf_counter() - start, 3)
    return runs


def verdicts(run: dict) -> dict:
    size = f"{run['classes']}x{run['domains']}"
    if "error" in run:
        return {}
    if run.get("device", "cpu").startswith("cuda"):  # the GPU targets: cold edits of two rows
        limit = GPU_TARGETS.get((run["arch"], size, run["paradigm"], run["method"]))
        return {} if limit is None or run["warm"] or run.get("precision", "fp32") != "fp32" else \
            {"time_ok": run["edit_seconds"] <= limit, "target_s": limit}
    if size not in TARGETS:
        return {}
    t = TARGETS[size]
    limit = t["warm"] if run["warm"] else t.get(run["method"]) if size == "10x4" else \
        t["text"] if (run["method"], run["paradigm"]) == ("text", "global") else \
        t["multimodal"] if (run["method"], run["paradigm"]) == ("multimodal", "domain") else None
    out = {"rss_ok": run["peak_rss_mb"] <= TARGETS["peak_rss_mb"]}
    return out | ({} if limit is None else {"time_ok": run["edit_seconds"] <= limit, "target_s": limit})


def method_label(run: dict) -> str:
    """The run's method, with its prototype start when not the default."""
    return run["method"] + (" (class start)" if run.get("proto_start") == "class" else "")


def growth(runs: list[dict]) -> list[dict]:
    """Least-squares fit of ``log seconds = log a + b log cells`` per (method, paradigm, warm)."""
    groups: dict = {}
    for r in runs:
        if "error" not in r:
            key = (r["arch"], method_label(r), r["paradigm"], r["warm"])
            groups.setdefault(key, {})[r["cells"]] = r["edit_seconds"]
    laws = []
    for (arch, method, paradigm, warm), pts in groups.items():
        if len(pts) < 3:
            continue
        xs, ys = [math.log(c) for c in pts], [math.log(max(s, 1e-6)) for s in pts.values()]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        a = math.exp(my - b * mx)
        laws.append({"arch": arch, "method": method, "paradigm": paradigm, "warm": warm, "a": a, "b": b,
                     "cells_measured": sorted(pts), "extrapolated_seconds_345x6": round(a * 2070 ** b, 1)})
    return laws


def table(runs: list[dict]) -> str:
    lines = ["| arch | size | paradigm | method | cold/warm | edit s | prompts s | prototypes s | solve s | inject s "
             "| other s | peak RSS MB | target s | ok |", "|" + "---|" * 14]
    for r in runs:
        arch = r["arch"] + ("" if r.get("precision", "fp32") == "fp32" else f" {r['precision']}") + \
            (f" ({r['device']}, peak {r['peak_gpu_mb']:.0f} MB)" if r.get("peak_gpu_mb") is not None else "")
        head = f"| {arch} | {r['classes']}x{r['domains']} | {r['paradigm']} | {method_label(r)} | "
        if "error" in r:
            lines.append(head + f"error: {r['error']} |||||||||")
            continue
        s, v = r["stages"], r["verdicts"]
        ok = "-" if not v else "yes" if all(x for k, x in v.items() if k.endswith("_ok")) else "NO"
        lines.append(head + f"{'warm' if r['warm'] else 'cold'} | {r['edit_seconds']:.2f} | "
                     + " | ".join(f"{s.get(k, 0.0):.2f}" for k in ("prompts", "prototypes", "solve", "inject", "other"))
                     + f" | {r['peak_rss_mb']:.0f} | {v.get('target_s', '-')} | {ok} |")
    return "\n".join(lines)


def write(path: Path | None, runs: list[dict], env: dict) -> dict:
    env["loadavg_end"] = os.getloadavg()
    result = {"runs": runs, "growth": growth(runs), "targets": TARGETS, "machine": env}
    if path:  # through a temporary file: a sweep stopped mid-write leaves the last complete JSON
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--archs", nargs="+", default=["ViT-B-32"])
    ap.add_argument("--methods", nargs="+", default=["text", "multimodal"], choices=["text", "multimodal"])
    ap.add_argument("--paradigms", nargs="+", default=["global"], choices=list(PARADIGMS))
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--domains", type=int, default=4)
    ap.add_argument("--sizes", nargs="+", default=None, metavar="CxD", help="several sizes, e.g. 10x4 50x6 100x6")
    ap.add_argument("--image-size", type=int, default=None, help="force the image size (default: the model's, 224)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per subprocess before giving up")
    ap.add_argument("--root", type=Path, default=None, help="import lightning_unlearn from this checkout")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda: refused where torch sees no CUDA device")
    ap.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "fp16", "bf16"],
                    help="model precisions (open_clip.create_model precision=)")
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast in the prototype synthesis (opt-in)")
    ap.add_argument("--max-images", type=int, default=None, help="cap on images per synthesis batch on CUDA")
    ap.add_argument("--proto-start", nargs="+", choices=["noise", "class"], default=["noise"],
                    help="where prototypes start: noise (the default) and / or class (the warm start, "
                         "proto_start='class'), each row run with each")
    ap.add_argument("--preset", choices=["gpu"], default=None,
                    help="gpu: the rows of the GPU table (see above) instead of --archs / --sizes / ...")
    ap.add_argument("--child", nargs=5, metavar=("ARCH", "METHOD", "PARADIGM", "C", "D"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        arch, method, paradigm, c, d = args.child
        print(json.dumps(child(arch, method, paradigm, int(c), int(d), args.image_size, args.device,
                               args.precisions[0], args.autocast, args.max_images, args.proto_start[0])))
        return
    if args.device.startswith("cuda"):  # refused here, before any subprocess, where there is no GPU
        import torch
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device "
                             f"(torch.cuda.is_available() is False); run on a machine with a GPU or use --device cpu")
    elif args.preset == "gpu":
        raise SystemExit("--preset gpu needs --device cuda")
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes] if args.sizes else \
        [(args.classes, args.domains)]
    for c, d in sizes:
        label_space(c, d)
    env = {"loadavg_start": os.getloadavg(), "cpu_count": os.cpu_count(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "root": str(args.root or ROOT),
           "device": args.device, "autocast": args.autocast, "max_images": args.max_images,
           "proto_starts": args.proto_start}
    rows = GPU_PRESET if args.preset == "gpu" else \
        [(arch, c, d, paradigm, method, precision) for arch in args.archs for c, d in sizes
         for paradigm in args.paradigms for method in args.methods for precision in args.precisions]
    runs = []
    for (arch, c, d, paradigm, method, precision), begin in [(r, s) for r in rows for s in args.proto_start]:
        print(f"running {arch} / {c}x{d} / {paradigm} / {method} / {precision} / {begin} start on {args.device} ...",
              file=sys.stderr, flush=True)
        for run in spawn(args, arch, method, paradigm, c, d, precision, begin):
            run["verdicts"] = verdicts(run)
            runs.append(run)
        result = write(args.json, runs, env)  # after every run: a stopped sweep keeps what it measured
    print(table(runs))
    for law in result["growth"]:
        print(f"growth {law['arch']} {law['method']} {law['paradigm']} {'warm' if law['warm'] else 'cold'}: "
              f"seconds = {law['a']:.3g} * cells^{law['b']:.2f} (measured at {law['cells_measured']} cells; "
              f"EXTRAPOLATED to 345x6 = 2070 cells: {law['extrapolated_seconds_345x6']} s)")
    print(f"\nload average {env['loadavg_start']} -> {env['loadavg_end']} on {env['cpu_count']} CPUs "
          f"(OMP_NUM_THREADS={env['omp_num_threads']})")


if __name__ == "__main__":
    main()
