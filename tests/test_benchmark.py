"""The benchmark runs end to end at the tiny size: every section gives rows of the shared schema, and the two
sides of the speed comparison gave the same logits on the same weights and batch before anything was timed."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW_KEYS = {"section", "metric", "ours", "reference", "ratio", "goal", "met", "note"}


def test_benchmark_smoke_run_at_tiny_size(tmp_path):
    output = tmp_path / "benchmark.json"
    command = [sys.executable, str(ROOT / "examples" / "benchmark.py"), "--size", "tiny", "--output", str(output)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(output.read_text())
    rows = result["rows"]
    assert result["sections"] == ["bench_speed", "bench_packing", "bench_quality"]
    assert all(set(row) == ROW_KEYS for row in rows)
    assert {row["section"] for row in rows} == {"speed", "packing", "quality"}

    # The logit check ran (in one process and again per side after loading) and found the models identical.
    (check,) = [row for row in rows if row["metric"].startswith("max |logit difference|")]
    assert check["met"] is True and 0 <= check["ours"] <= 1e-4
    assert "loaded per side" in check["note"]

    speed = [row for row in rows if row["section"] == "speed" and row["reference"] is not None]
    assert len(speed) == 4  # training step, generation at batch 1 and 8, peak memory
    assert all(row["ours"] > 0 and row["reference"] > 0 for row in speed)
    # Time ratios are medians over adjacent pairs of units, within the pairs' range; memory is one pass per side.
    for row in speed:
        if "memory" not in row["metric"]:
            low, high = map(float, re.search(r"adjacent pairs \((\S+)-(\S+)\)", row["note"]).groups())
            assert low > 0 and low - 0.005 <= row["ratio"] <= high + 0.005
    (memory,) = [row for row in speed if "memory" in row["metric"]]
    assert abs(memory["ratio"] - memory["ours"] / memory["reference"]) < 1e-9
    assert all("same tokens: True" in row["note"] for row in speed if "generation" in row["metric"])

    throughput, loss_gap = [row for row in rows if row["section"] == "packing"]
    assert throughput["ours"] > 0 and throughput["reference"] > 0
    assert abs(throughput["ratio"] - throughput["ours"] / throughput["reference"]) < 1e-2
    assert loss_gap["met"] is True and loss_gap["ours"] < 1e-3  # packed and padded gave the same per-sample losses

    quality = {row["metric"].rsplit(", ", 1)[1]: row for row in rows if row["section"] == "quality"}
    assert sorted(quality) == ["linear", "mlp2x_gelu", "pixel_shuffle", "qformer", "resampler"]
    assert all(0 <= row["ours"] <= 1 and row["met"] is None for row in quality.values())  # not judged at tiny size

    table = run.stdout.splitlines()
    header = next(index for index, line in enumerate(table) if line.startswith("| section |"))
    assert len([line for line in table[header + 2 :] if line.startswith("| ")]) == len(rows)
