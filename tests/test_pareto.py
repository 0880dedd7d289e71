"""The Pareto table's marking, through the benchmark's command line (``--summary-only`` summarises the
runs of a result file again): a row is marked when no other row of its paradigm is at least as good on
every column and better on one (probes by distance to chance, more relearning steps is better)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _row(method, forget, seconds, steps, probe=0.9, refused=None):
    r = {"paradigm": "global", "method": method, "forget_mean": forget, "forget_worst": forget,
         "retain_drop_mean": 0.0, "retain_drop_worst": 0.0, "same_drop_mean": None, "same_drop_worst": None,
         "probe_raw": probe, "probe_norm": probe, "relearn_steps": steps, "images": 0, "seconds": seconds,
         "steps": 0, "own_criterion_met": True, "criterion": "c"}
    return {"paradigm": "global", "method": method, "refused": refused} if refused else r


def summarise(tmp_path, runs, bound=50) -> tuple[dict, str]:
    f = tmp_path / "pareto.json"
    f.write_text(json.dumps({"runs": runs, "relearn_steps": bound}))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pareto.py"), "--json", str(f), "--summary-only"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(f.read_text())["summary"], out.stdout


def test_dominated_rows_are_not_marked(tmp_path):
    rows = [_row("fast", 0.0, 1.0, 2), _row("slow", 0.0, 5.0, 2), _row("deep", 0.0, 5.0, 2, probe=0.5),
            _row("sticky", 0.2, 9.0, None)]
    summary, _ = summarise(tmp_path, rows)
    # never relearned within 50 steps counts as the most steps
    assert {r["method"]: r["pareto"] for r in summary} == {"fast": True, "slow": False, "deep": True, "sticky": True}


def test_summary_and_table_keep_refused_rows_out_of_the_marking(tmp_path):
    summary, text = summarise(tmp_path, [_row("a", 0.0, 1.0, 3), _row("b", 0.0, 1.0, 3, refused="refused: whole domains")])
    assert summary[0]["pareto"] and "pareto" not in summary[1]
    assert "refused" in text and "| * |" in text
