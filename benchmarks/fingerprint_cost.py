"""Cost of the edit artifact's weights digest (every weight of the model, at each precision).

    python benchmarks/fingerprint_cost.py --json benchmarks/results/fingerprint_cost.json

For each architecture (randomly initialised open_clip model on CPU, one thread): the seconds to
take the weights digest ``save_edit`` stores (float32 + bfloat16 + float16 digests of every weight),
and the seconds ``apply_edit_file_`` spends checking it on the same weights in float32 and in bfloat16.
The machine's load average is recorded: timings on a busy machine are upper bounds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(arch: str) -> dict:
    import open_clip
    import torch

    from lightning_unlearn import embedded
    from lightning_unlearn.localdir import quiet_open_clip
    from lightning_unlearn.state import check_digest, weights_digest
    embedded.register()
    with quiet_open_clip():
        model = open_clip.create_model(arch).eval()
    row = {"arch": arch, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}
    t0 = time.perf_counter()
    fp = weights_digest(model)
    row["fingerprint_s"] = round(time.perf_counter() - t0, 2)
    for dtype in ("float32", "bfloat16"):
        model = model.to(getattr(torch, dtype))
        t0 = time.perf_counter()
        problems, _ = check_digest(fp, model)
        row[f"check_{dtype}_s"] = round(time.perf_counter() - t0, 2)
        assert not problems, problems
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="world-clip,ViT-B-32")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    rows = [measure(a) for a in args.archs.split(",")]
    print(f"{'arch':<12} {'params (M)':>10} {'fingerprint (s)':>16} {'check fp32 (s)':>15} {'check bf16 (s)':>15}")
    for r in rows:
        print(f"{r['arch']:<12} {r['params_m']:>10} {r['fingerprint_s']:>16} {r['check_float32_s']:>15} "
              f"{r['check_bfloat16_s']:>15}")
    result = {"rows": rows, "threads": 1, "load_average": os.getloadavg()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
