"""The Pareto table's marking: a row is marked when no other row of its paradigm is at least as good on
every column and better on one (probes by distance to chance, more relearning steps is better)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.pareto import fmt_table, mark_pareto, summarise  # noqa: E402


def _row(method, forget, seconds, steps, probe=0.9, refused=None):
    r = {"paradigm": "global", "method": method, "forget_mean": forget, "forget_worst": forget,
         "retain_drop_mean": 0.0, "retain_drop_worst": 0.0, "same_drop_mean": None, "same_drop_worst": None,
         "probe_raw": probe, "probe_norm": probe, "relearn_steps": steps, "images": 0, "seconds": seconds,
         "steps": 0, "own_criterion_met": True, "criterion": "c"}
    return {"paradigm": "global", "method": method, "refused": refused} if refused else r


def test_dominated_rows_are_not_marked():
    rows = [_row("fast", 0.0, 1.0, 2), _row("slow", 0.0, 5.0, 2), _row("deep", 0.0, 5.0, 2, probe=0.5),
            _row("sticky", 0.2, 9.0, None)]
    mark_pareto(rows, bound=50)
    assert [r["pareto"] for r in rows] == [True, False, True, True]  # never relearned within 50 steps counts


def test_summary_and_table_keep_refused_rows_out_of_the_marking():
    table = summarise([_row("a", 0.0, 1.0, 3), _row("b", 0.0, 1.0, 3, refused="refused: whole domains")], 50)
    assert table[0]["pareto"] and "pareto" not in table[1]
    text = fmt_table(table, 50)
    assert "refused" in text and "| * |" in text
