"""Convert the deep-mode research logs (``benchmarks/results/deep_research/*.log``) into JSON beside them.

The (archived) scripts of ``benchmarks/archive/deep_research/`` printed one line per (request,
variant): a label (the paradigm, the request's description cut to a fixed width, the variant)
followed by ``key=value`` measurements.
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
LOGS = ["exp3_spans_star.log", "exp4_kept_subspace_star.log", "exp7_normalised_global.log",
        "exp7_normalised_ds_domain.log", "exp8_order.log", "exp9_text_tower.log", "exp10_real_surface.log",
        "exp10_real_surface_16.log", "exp11_audit.log", "deep_sweep_normalised_everywhere.log"]
PAIR = re.compile(r"(\S+)=(\S+)")
SPAN = re.compile(r"^(\S+)\s+rank (\d+) resid rel ([\d.]+) d' ([\d.]+)$")  # exp3: a span, then its edits


def value(text: str):
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text


def parse_line(line: str) -> dict | None:
    first = PAIR.search(line)
    if first is None:
        return None
    label = " ".join(line[:first.start()].split())
    row = {"paradigm": label.split()[0], "label": label, "variant": label.split()[-1]}
    named = re.match(r"(\S+) (\S+) \1: ", label)  # deep_sweep.py: paradigm, variant, then the description
    if named:
        row["variant"] = named.group(2)
    request = re.search(r"\['(\w+)", label)  # the first forgotten class (the description is cut to a width)
    if request:
        row["request"] = request.group(1)
    rounds = re.search(r"round (\d+) rank (\d+)", label)  # exp7: rounds of the normalised gap
    if rounds:
        row.update(variant=f"round {rounds.group(1)}", round=int(rounds.group(1)), rank=int(rounds.group(2)))
    row.update({k: value(v) for k, v in PAIR.findall(line[first.start():])})
    return row


def convert(log: str) -> str:
    rows, span, header, summary = [], {}, None, []
    for line in (DEEP / log).read_text().splitlines():
        if line.startswith("|"):  # a summary table the script printed: its rows as {column: text}
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set(line) <= set("|- "):
                summary.append(dict(zip(header, cells)))
            continue
        oracle = re.fullmatch(r"d' oracle ([\d.]+)", line.strip())
        head = SPAN.match(line.strip())
        if oracle:
            rows.append({"label": "d' oracle", "d_prime": float(oracle.group(1))})
        elif head:
            span = {"span": head.group(1), "rank": int(head.group(2)), "resid_rel": float(head.group(3)),
                    "d_prime": float(head.group(4))}
        elif (row := parse_line(line)) is not None:
            if line.startswith(" ") and span:  # exp3: an edit of the span above ('I' or 'Sp')
                row = {**span, "variant": row["variant"], **{k: v for k, v in row.items()
                                                               if k not in ("paradigm", "label", "variant")}}
            rows.append(row)
    doc = {"source": f"benchmarks/results/deep_research/{log}", "converted_by": "python docs/logs_to_json.py",
           "rows": rows, **({"summary_table": summary} if summary else {})}
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
