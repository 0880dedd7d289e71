"""Convert the deep-mode research logs (``benchmarks/results/deep_research/*.log``) into JSON beside them.

The scripts of ``benchmarks/deep_research/`` print one line per (request, variant): a label (the paradigm,
the request's description cut to a fixed width, the variant) followed by ``key=value`` measurements.
This turns each line into ``{"paradigm", "label", "variant", <key>: <float>, ...}`` so that the docs
render and check those numbers from JSON like every other result; nothing is rerun. Usage (from the
repository root)::

    python docs/logs_to_json.py              # rewrite every converted file listed in LOGS
    python docs/logs_to_json.py --check      # exit 1 if a committed JSON differs from its log

``tests/test_docs.py`` runs the check.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEEP = ROOT / "benchmarks" / "results" / "deep_research"
LOGS = ["exp7_normalised_global.log", "exp7_normalised_ds_domain.log", "exp8_order.log", "exp9_text_tower.log",
        "exp10_real_surface.log", "exp10_real_surface_16.log", "exp11_audit.log"]
PAIR = re.compile(r"(\S+)=(-?[\d.]+(?:e-?\d+)?)")


def parse_line(line: str) -> dict | None:
    first = PAIR.search(line)
    if first is None:
        return None
    label = " ".join(line[:first.start()].split())
    row = {"paradigm": label.split()[0], "label": label, "variant": label.split()[-1]}
    request = re.search(r"\['(\w+)", label)  # the first forgotten class (the description is cut to a width)
    if request:
        row["request"] = request.group(1)
    rounds = re.search(r"round (\d+) rank (\d+)", label)  # exp7: rounds of the normalised gap
    if rounds:
        row.update(variant=f"round {rounds.group(1)}", round=int(rounds.group(1)), rank=int(rounds.group(2)))
    row.update({k: float(v) for k, v in PAIR.findall(line[first.start():])})
    return row


def convert(log: str) -> str:
    text = (DEEP / log).read_text()
    rows = [r for r in map(parse_line, text.splitlines()) if r is not None]
    doc = {"source": f"benchmarks/results/deep_research/{log}", "converted_by": "python docs/logs_to_json.py",
           "rows": rows}
    return json.dumps(doc, indent=1) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if a JSON differs from its log")
    args = ap.parse_args(argv)
    stale = []
    for log in LOGS:
        out = DEEP / (Path(log).stem + ".json")
        new = convert(log)
        if not out.is_file() or out.read_text() != new:
            stale.append(str(out.relative_to(ROOT)))
            if not args.check:
                out.write_text(new)
    if args.check and stale:
        print("differ from their logs (run `python docs/logs_to_json.py`): " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
