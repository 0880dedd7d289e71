"""benchmarks/device_check.py: refuses without CUDA (exit code 2, nothing written), and its sections run
end to end on CPU with tiny settings when smoke-tested (--allow-cpu)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def test_refuses_without_cuda(tmp_path):
    out = tmp_path / "check.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--json", str(out)],
                       capture_output=True, text=True, cwd=ROOT, env=env)
    assert p.returncode == 2 and "no CUDA device" in p.stderr and "--allow-cpu" in p.stderr
    assert not out.exists()


def test_smoke_on_cpu_with_tiny_settings(tmp_path):
    from benchmarks.device_check import main
    out = tmp_path / "check.json"
    code = main(["--json", str(out), "--allow-cpu", "--sections", "demo,precision,edit_cost", "--method", "text",
                 "--no-check", "--n-per-cell", "1", "--precisions", "bf16", "--archs", "world-clip", "--sizes", "3x2"])
    assert code == 0
    result = json.loads(out.read_text())
    demo = result["sections"]["demo"]
    assert [r["paradigm"] for r in demo] == ["global", "domain-specific", "domain"]
    assert "refused" in demo[2]  # text-only cannot forget whole domains
    for r in demo[:2]:
        assert {"worst_forget_cell", "worst_retain_cell", "edit_seconds", "check"} <= set(r) and r["check"] is None
    assert [r["paradigm"] for r in result["sections"]["precision"]["bf16"]] == ["global", "domain-specific", "domain"]
    cost = result["sections"]["edit_cost"]
    assert [(r["paradigm"], r.get("warm")) for r in cost] == [("global", False), ("global", True), ("domain", None)]
    assert cost[0]["edit_seconds"] > 0 and result["skipped"] == [] and result["environment"]["device"] == "cpu"


def test_a_spent_budget_skips_every_section_and_still_writes(tmp_path):
    from benchmarks.device_check import main
    out = tmp_path / "check.json"
    assert main(["--json", str(out), "--allow-cpu", "--budget", "0", "--sections", "demo,edit_cost",
                 "--n-per-cell", "1", "--archs", "world-clip", "--sizes", "3x2"]) == 0
    result = json.loads(out.read_text())
    assert result["sections"] == {"demo": [], "edit_cost": []}
    assert result["skipped"] == ["demo: global", "edit_cost: world-clip 3x2 global"]
