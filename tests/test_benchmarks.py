"""The benchmark scripts: every one compiles, and the edit-cost script's JSON has its documented keys."""
import json
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_every_benchmark_script_compiles(script, tmp_path):
    py_compile.compile(str(ROOT / "benchmarks" / script), cfile=str(tmp_path / "x.pyc"), doraise=True)


def test_edit_cost_json_has_every_run_its_stages_and_the_growth_law(tmp_path):
    out = tmp_path / "cost.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "edit_cost.py"), "--json", str(out), "--archs",
                    "world-clip", "--methods", "text", "--sizes", "3x2", "4x2", "5x2", "--timeout", "300"],
                   check=True, capture_output=True, text=True, cwd=ROOT)
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert [(r["classes"], r["warm"]) for r in runs] == [(3, False), (3, True), (4, False), (4, True), (5, False),
                                                        (5, True)]
    for r in runs:
        assert {"arch", "method", "edit_seconds", "peak_rss_mb", "classes", "domains", "paradigm", "warm",
                "stages"} <= set(r)
        assert r["edit_seconds"] > 0 and {"prompts", "solve", "inject", "other"} <= set(r["stages"])
        assert r["ranks"]["image"] >= 1 and r["verdicts"] == {}  # no target is set for these sizes
    law = {(g["method"], g["warm"]): g for g in result["growth"]}
    assert set(law) == {("text", False), ("text", True)}
    assert law[("text", False)]["cells_measured"] == [6, 8, 10] and law[("text", False)]["a"] > 0


def _row(method, forget, seconds, converged=None):
    accs = {f"{k}_{w}": 1.0 for k in ("forget_acc", "retain_acc", "unrelated_acc") for w in ("before", "after")}
    return {"set": "single", "paradigm": "global", "method": method, "forget": forget, "edit_seconds": seconds,
            "same_class_other_domains_acc_before": None, "same_class_other_domains_acc_after": None,
            "converged": converged, **accs}


def test_unlearning_summary_reports_the_total_and_the_worst_time_ratio(tmp_path, capsys):
    """The baseline's time over the edit time of the same requests: the ratio of the sums, and the
    worst (smallest) single request's, over the requests where the baseline reached its criterion
    (``benchmarks/unlearning.py --merge``: the summary of recorded runs, nothing rerun)."""
    runs = [_row("multimodal", "a", 1.0), _row("multimodal", "b", 2.0),
            _row("finetune", "a", 10.0, True), _row("finetune", "b", 4.0, True),
            _row("multimodal", "c", 1.0), _row("finetune", "c", 0.5, False)]  # short of its criterion: no ratio
    shard, out = tmp_path / "shard.json", tmp_path / "summary.json"
    shard.write_text(json.dumps({"runs": runs, "total_seconds": 1.0}))
    from benchmarks.unlearning import main
    main(["--json", str(out), "--merge", str(shard)])
    summ = json.loads(out.read_text())["summary"]
    ft = next(s for s in summ if s["method"] == "finetune")
    assert ft["time_ratio"] == pytest.approx(14.0 / 3.0) and ft["time_ratio_worst"] == pytest.approx(2.0)
    assert "4.7 (2.0)" in capsys.readouterr().out
    mm = next(s for s in summ if s["method"] == "multimodal")
    assert mm["time_ratio"] is None and mm["time_ratio_worst"] is None
