"""Whole-domain edit of the embedded model under Lightning's DDP on CPU: N processes x 1 thread vs one.

    python benchmarks/ddp_scaling.py --json benchmarks/results/ddp_scaling.json
    python benchmarks/ddp_scaling.py --json out.json --procs 1 2 --repeats 2 --domain sketch

Each run is a fresh ``Trainer(accelerator="cpu", devices=N, strategy="ddp")`` (N = 1: a single
device) testing a LightningModule that holds the embedded model; in ``setup`` every rank
waits at ``strategy.barrier()``, then times ``integration.compute_edit_`` (the edit itself: cold,
nothing cached, library defaults: multimodal, 30 prototype steps for a whole domain) with the
Trainer's strategy, which shares the prototype synthesis across the ranks
(:mod:`lightning_unlearn.sharding`). Process start, model loading and the barrier are not timed.
The edit's time is the slowest rank's; ``ratio`` is the N-process time over the 1-process time of
the same repeat (``cpu_ratio``: the same with the busiest rank's CPU time, ``time.process_time``:
the share of the work one rank does, whatever else runs on the cores; ``cpu_share``: the CPU time of
all ranks over the edit's wall time, the cores the run actually got), and ``maps_identical`` says whether every rank's map equals the 1-process map bit
for bit; ``ratio`` in the summary is the worst repeat's (``ratio_median`` the median). Target (2 CPU
cores, gloo, 2 x 1 thread): ratio <= 0.6, maps identical. The load average
is recorded, and ``sched_autogroup``: with Linux's autogroup scheduling on, the ranks (one session)
share one session's CPU time against the other sessions on the machine, so on busy cores N ranks get
no more CPU than one process and only ``cpu_ratio`` shows the split.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.6


def child(procs: int, domain: str, out: Path) -> None:
    """One Trainer run (Lightning's ddp launcher re-runs this command for ranks >= 1)."""
    import lightning as L
    import torch

    sys.path.insert(0, str(ROOT))
    from lightning_unlearn import ForgetRequest, UnlearnConfig, embedded
    from lightning_unlearn.integration import compute_edit_

    torch.set_num_threads(1)
    emb = embedded.load_embedded()
    request = ForgetRequest(emb.classnames, emb.domains, forget_domains=[domain])

    class Bench(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.clip = emb.model

        def setup(self, stage):  # as CLIPUnlearning: the process group is up, no inference mode yet
            strategy = self.trainer.strategy
            strategy.barrier()
            start, cpu = time.perf_counter(), time.process_time()
            result = compute_edit_(self.clip, emb.tokenizer, request, UnlearnConfig(), strategy=strategy)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            out.mkdir(parents=True, exist_ok=True)
            torch.save({"rank": strategy.global_rank, "world_size": strategy.world_size, "seconds": seconds,
                        "cpu_seconds": cpu, "map": result.maps["image"].clone(), "stats": result.stats["image"],
                        "threads": torch.get_num_threads()}, out / f"rank{strategy.global_rank}.pt")

        def test_step(self, batch, batch_idx):
            return None

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(procs, 1)), batch_size=1)
    trainer = L.Trainer(accelerator="cpu", devices=procs, strategy="ddp" if procs > 1 else "auto", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(Bench(), loader, verbose=False)


def run(procs: int, domain: str, out: Path, timeout: float) -> tuple:
    import torch
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "PL_DISABLE_FORK": "1"}
    load = os.getloadavg()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(procs), "--domain", domain,
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise SystemExit(f"{procs} process(es) failed:\n{done.stderr[-3000:]}")
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(procs)]
    return {"procs": procs, "edit_seconds": round(max(r["seconds"] for r in ranks), 3),
            "rank_seconds": [round(r["seconds"], 3) for r in ranks],
            "rank_cpu_seconds": [round(r["cpu_seconds"], 3) for r in ranks],
            "cpu_seconds": round(max(r["cpu_seconds"] for r in ranks), 3),
            "cpu_share": round(sum(r["cpu_seconds"] for r in ranks) / max(r["seconds"] for r in ranks), 3),
            "process_seconds": round(time.perf_counter() - start, 3), "threads_per_process": ranks[0]["threads"],
            "loadavg_before": load, "loadavg_after": os.getloadavg(),
            "prototype_seconds_per_rank": [r["stats"].get("prototype_seconds") for r in ranks],
            "prototype_image_steps": ranks[0]["stats"].get("prototype_image_steps"),
            "n_prototypes": ranks[0]["stats"].get("n_prototypes"),
            "ranks_identical": all(torch.equal(r["map"], ranks[0]["map"]) for r in ranks)}, ranks[0]["map"]


def _autogroup() -> str | None:
    """Linux's per-session CPU sharing ("1": the ranks, one session, share one session's CPU time)."""
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except OSError:
        return None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts; the first is the reference")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--domain", default="sketch", help="the domain forgotten")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, args.domain, args.out)
    import torch
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            ref = None
            for procs in args.procs:
                print(f"repeat {rep}: {procs} process(es) ...", file=sys.stderr, flush=True)
                r, M = run(procs, args.domain, Path(tmp) / f"{rep}-{procs}", args.timeout)
                ref = (r, M) if ref is None else ref
                r |= {"repeat": rep, "ratio": round(r["edit_seconds"] / ref[0]["edit_seconds"], 3),
                      "cpu_ratio": round(r["cpu_seconds"] / ref[0]["cpu_seconds"], 3),
                      "maps_identical": bool(r["ranks_identical"] and torch.equal(M, ref[1]))}
                runs.append(r)
                print(f"  edit {r['edit_seconds']:.2f} s (ranks {r['rank_seconds']}, CPU {r['rank_cpu_seconds']}), "
                      f"ratio {r['ratio']} (CPU time {r['cpu_ratio']}), "
                      f"maps identical {r['maps_identical']}, load {r['loadavg_before']}", file=sys.stderr)
    multi = [r for r in runs if r["procs"] > 1]
    result = {"request": f"whole domain {args.domain!r} of the embedded model, library defaults (cold)",
              "runs": runs, "target_ratio": TARGET_RATIO,
              "ratio": max((r["ratio"] for r in multi), default=None),
              "ratio_median": statistics.median(r["ratio"] for r in multi) if multi else None,
              "cpu_ratio": max((r["cpu_ratio"] for r in multi), default=None),
              "maps_identical": all(r["maps_identical"] for r in runs),
              "ratio_ok": bool(multi) and all(r["ratio"] <= TARGET_RATIO for r in multi),
              "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__,
                          "backend": "gloo", "threads_per_process": 1, "sched_autogroup": _autogroup()}}
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
