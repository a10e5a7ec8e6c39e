"""scripts/gpu_check.py without a GPU: its parts skip with a reason when the budget is spent, the reports are
written, and the profile's arithmetic (categories, overlap, idle) on hand-made events."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

import gpu_check  # noqa: E402


def test_a_spent_budget_skips_every_part_with_its_reason_and_writes_the_reports(tmp_path):
    command = [sys.executable, "scripts/gpu_check.py", "--quick", "--budget=0.01", f"--out={tmp_path}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(report["parts"]) == [name for name, _, _ in gpu_check.PARTS]
    assert report["parts"]["machine"]["status"] == "ok"
    for name, part in list(report["parts"].items())[1:]:
        assert part["status"].startswith("skipped: ") and "budget" in part["status"], (name, part)
    assert done.stdout.strip().splitlines()[-1] == report["summary"]
    assert "[--quick: not a measurement]" in report["summary"]
    assert "## throughput: skipped" in (tmp_path / "gpu_check.md").read_text()


def test_profile_shares_count_categories_once_and_idle_between_ops():
    hlo = (
        '  %fusion.1 = f32[8] fusion(), metadata={op_name="jit(train_step)/jvp(Classifier)/add"}\n'
        '  %fusion.2 = f32[8] fusion(), metadata={op_name="jit(train_step)/mul"}\n'
        '  %all-reduce.3 = f32[8] all-reduce(), metadata={op_name="jit(train_step)/psum"}\n'
    )
    events = [  # (kernel, HLO instruction, start ns, end ns) over a 100 ns span
        ("sm90_xmma_fprop_implicit_gemm", "custom-call.0", 0, 40),
        ("loop_add_fusion", "fusion.1", 30, 50),  # overlaps the convolution by 10 ns
        ("loop_mul_fusion", "fusion.2", 60, 70),
        ("ncclAllReduce", "all-reduce.3", 90, 100),
    ]
    shares = gpu_check._shares(events, gpu_check._instructions(hlo))["shares"]
    expected = {  # 70 ns busy (the overlap once), split 40:20:10:10 by op time; 50-60 and 70-90 idle
        "collectives": 0.0875,
        "convolutions and matmuls": 0.35,
        "normalisation and elementwise": 0.175,
        "optimizer and batch drawing": 0.0875,
        "idle": 0.3,
    }
    assert shares.keys() == expected.keys()
    for name, share in expected.items():
        assert abs(shares[name] - share) < 1e-9, (name, shares)
