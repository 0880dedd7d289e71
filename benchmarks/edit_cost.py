"""Cost of one edit: ``unlearn_`` on a randomly initialised open_clip model on CPU.

    python benchmarks/edit_cost.py --json out/edit_cost.json                  # ViT-B-32, text + multimodal
    python benchmarks/edit_cost.py --json /tmp/e.json --methods text --repeats 3

The request is one class x 4 domains (10 class names, domains photo / sketch / cartoon /
painting, ``forget_classes=[one]``), computed with the library defaults (only ``progress=False``).
Every (arch, method) run happens in a fresh subprocess, so its peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``, model included) is its own. ``edit_seconds`` is the first,
cold call; with ``--repeats`` > 1 the edit is restored and recomputed, and the fastest call is
``edit_seconds_best``. Targets: text <= 1 s, multimodal <= 60 s, peak RSS <= 3000 MB. The
machine's load average is recorded: timings on a busy machine are upper bounds.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLASSNAMES = ["dog", "cat", "horse", "elephant", "giraffe", "guitar", "house", "person", "car", "bird"]
DOMAINS = ["photo", "sketch", "cartoon", "painting"]
FORGET = ["dog"]
TARGETS = {"text": 1.0, "multimodal": 60.0, "peak_rss_mb": 3000.0}


def _rss_mb() -> float:
    """Current resident set size (MB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def child(arch: str, method: str, image_size: int | None, repeats: int) -> dict:
    """One run, in this (fresh) process."""
    import open_clip
    import torch

    from lightning_unlearn import ForgetRequest, embedded, restore_, unlearn_

    if arch == embedded.MODEL_NAME:  # the embedded architecture (random init here) for smoke runs
        embedded.register()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    kwargs = {"force_image_size": image_size} if image_size else {}
    model = open_clip.create_model(arch, **kwargs).eval()
    tokenizer = open_clip.get_tokenizer(arch)
    load_seconds = time.perf_counter() - t0
    request = ForgetRequest(CLASSNAMES, DOMAINS, forget_classes=FORGET)
    rss_before = _rss_mb()
    times, result = [], None
    for i in range(repeats):
        if i:
            restore_(model)
        start = time.perf_counter()
        result = unlearn_(model, tokenizer, request, method=method, progress=False)
        times.append(time.perf_counter() - start)
    size = model.visual.image_size
    stats = {tower: dict(s) for tower, s in result.stats.items()}
    run = {
        "arch": arch, "method": method, "edit_seconds": round(times[0], 3), "edit_seconds_best": round(min(times), 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1), "rss_before_edit_mb": round(rss_before, 1),
        "load_seconds": round(load_seconds, 3), "repeats": repeats,
        "image_size": size[0] if isinstance(size, (tuple, list)) else size,
        "solver": result.config.solver, "towers": list(result.config.towers), "site": result.config.site,
        "n_prototypes": result.config.n_prototypes, "proto_steps": result.config.proto_steps,
        "ranks": result.ranks, "stats": stats,
        "n_forget_cells": len(request.forget_cells), "n_retain_cells": len(request.retain_cells),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "open_clip": open_clip.__version__,
    }
    steps = sum(s.get("prototype_steps", 0) for s in stats.values())
    if steps:
        seconds = sum(s.get("prototype_seconds", 0.0) for s in stats.values())
        run["prototype_seconds_per_step"] = round(seconds / steps, 3)
        run["prototype_images"] = sum(s.get("n_prototypes", 0) for s in stats.values())
    return run


def spawn(arch: str, method: str, image_size: int | None, repeats: int, timeout: float | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", arch, method, "--repeats", str(repeats)]
    if image_size:
        cmd += ["--image-size", str(image_size)]
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"arch": arch, "method": method, "error": f"timed out after {timeout} s"}
    if out.returncode:
        return {"arch": arch, "method": method, "error": out.stderr.strip().splitlines()[-1:] or [f"exit {out.returncode}"]}
    run = json.loads(out.stdout.strip().splitlines()[-1])
    run["process_seconds"] = round(time.perf_counter() - start, 3)
    return run


def verdicts(run: dict) -> dict:
    if "error" in run:
        return {}
    return {"time_ok": run["edit_seconds"] <= TARGETS[run["method"]],
            "rss_ok": run["peak_rss_mb"] <= TARGETS["peak_rss_mb"]}


def table(runs: list[dict]) -> str:
    lines = ["| arch | method | solver | edit s (cold) | edit s (best) | target s | peak RSS MB | RSS before edit MB "
             "| s / prototype step | prototype steps | ok |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['method']} | error: {r['error']} |||||||||")
            continue
        steps = sum(s.get("prototype_steps", 0) for s in r["stats"].values()) or "-"
        ok = "yes" if all(r["verdicts"].values()) else "NO (" + ", ".join(k for k, v in r["verdicts"].items() if not v) + ")"
        lines.append(f"| {r['arch']} | {r['method']} | {r['solver']} | {r['edit_seconds']:.3f} | "
                     f"{r['edit_seconds_best']:.3f} | {TARGETS[r['method']]:g} | {r['peak_rss_mb']:.0f} | "
                     f"{r['rss_before_edit_mb']:.0f} | {r.get('prototype_seconds_per_step', '-')} | {steps} | {ok} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--archs", nargs="+", default=["ViT-B-32"])
    ap.add_argument("--methods", nargs="+", default=["text", "multimodal"], choices=["text", "multimodal"])
    ap.add_argument("--image-size", type=int, default=None, help="force the image size (default: the model's, 224)")
    ap.add_argument("--repeats", type=int, default=None, help="edits per run (default: 3 for text, 1 for multimodal)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per run before giving up")
    ap.add_argument("--child", nargs=2, metavar=("ARCH", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.image_size, args.repeats or 1)))
        return
    env = {"loadavg_start": os.getloadavg(), "cpu_count": os.cpu_count(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    runs = []
    for arch in args.archs:
        for method in args.methods:
            repeats = args.repeats or (3 if method == "text" else 1)
            print(f"running {arch} / {method} ...", file=sys.stderr, flush=True)
            run = spawn(arch, method, args.image_size, repeats, args.timeout)
            run["verdicts"] = verdicts(run)
            runs.append(run)
    env["loadavg_end"] = os.getloadavg()
    result = {"runs": runs, "targets": TARGETS, "request": {"classnames": CLASSNAMES, "domains": DOMAINS,
                                                            "forget_classes": FORGET}, "machine": env}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print(table(runs))
    print(f"\nload average {env['loadavg_start']} -> {env['loadavg_end']} on {env['cpu_count']} CPUs "
          f"(OMP_NUM_THREADS={env['omp_num_threads']})")


if __name__ == "__main__":
    main()
