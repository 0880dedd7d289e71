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
