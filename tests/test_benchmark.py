"""The benchmark runs end to end at the tiny size: every section gives rows of the shared schema, and the sides of
the speed and vocabulary comparisons gave the same logits and first-step losses on the same weights and batch."""

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
    assert result["sections"] == ["bench_speed", "bench_packing", "bench_quality", "bench_vocab"]
    assert all(set(row) == ROW_KEYS for row in rows)
    assert {row["section"] for row in rows} == {"speed", "packing", "quality", "vocab"}

    # The logit check ran (in one process and again per side after loading) and found the models identical.
    (check,) = [row for row in rows if row["metric"].startswith("max |logit difference|")]
    assert check["met"] is True and 0 <= check["ours"] <= 1e-4
    assert "loaded per side" in check["note"]

    speed = [row for row in rows if row["section"] == "speed" and row["reference"] is not None]
    assert len(speed) == 4  # training step, generation at batch 1 and 8, peak memory
    assert all(row["ours"] > 0 and row["reference"] > 0 for row in speed)
    _check_ratios(speed)
    assert all("same tokens: True" in row["note"] for row in speed if "generation" in row["metric"])

    _check_vocabulary_rows([row for row in rows if row["section"] == "vocab"])

    throughput, loss_gap = [row for row in rows if row["section"] == "packing"]
    assert throughput["ours"] > 0 and throughput["reference"] > 0
    assert abs(throughput["ratio"] - throughput["ours"] / throughput["reference"]) < 1e-2
    assert loss_gap["met"] is True and loss_gap["ours"] < 1e-3  # packed and padded gave the same per-sample losses

    quality = {row["metric"].rsplit(", ", 1)[1]: row for row in rows if row["section"] == "quality"}
    assert sorted(quality) == ["linear", "mlp2x_gelu", "pixel_shuffle", "qformer", "resampler"]
    assert all(0 <= row["ours"] <= 1 and row["met"] is None for row in quality.values())  # not judged at tiny size
    # Each row names its connector's recipe: the Q-Former's first stage, the query connectors' own rate.
    assert "after 2 steps of qformer_pretrain" in quality["qformer"]["note"]
    assert "connector lr 0.001" in quality["resampler"]["note"] and "connector lr 0.003" in quality["linear"]["note"]

    table = run.stdout.splitlines()
    header = next(index for index, line in enumerate(table) if line.startswith("| section |"))
    assert len([line for line in table[header + 2 :] if line.startswith("| ")]) == len(rows)


def _check_ratios(rows: list[dict]) -> None:
    """Time and throughput ratios are medians over adjacent pairs of units, within the pairs' range; a memory ratio
    is the two peaks' ratio."""
    for row in rows:
        if "memory" in row["metric"]:
            assert abs(row["ratio"] - row["ours"] / row["reference"]) < 1e-9
        else:
            low, high = map(float, re.search(r"adjacent pairs \((\S+)-(\S+)\)", row["note"]).groups())
            assert low > 0 and low - 0.005 <= row["ratio"] <= high + 0.005


def _check_vocabulary_rows(rows: list[dict]) -> None:
    metrics = [row["metric"].rsplit(" (", 1)[0] for row in rows]
    assert metrics == [
        "first-step loss, max |difference| between fp32 sides",
        "training step, s, vs Llava + peft",
        "peak training memory, MiB, vs Llava + peft",
        "training step, s, ours without LM head or loss (the floor of any head), vs Llava + peft",
        "peak training memory, MiB, ours without LM head or loss (the floor of any head), vs Llava + peft",
        "training step, s, vs Llava + peft, both with gradient checkpointing",
        "peak training memory, MiB, vs Llava + peft, both with gradient checkpointing",
        "real training tokens/s, vs TRL SFTTrainer defaults",
        "peak training memory, MiB, vs TRL SFTTrainer defaults",
        "real training tokens/s, vs TRL SFTTrainer fp32",
        "peak training memory, MiB, vs TRL SFTTrainer fp32",
        "real training tokens/s, packed (ours) vs TRL SFTTrainer defaults, padded",
    ]
    losses, *compared = rows
    # Every side trained on the same weights and batch: the same loss before any update (TRL's defaults at bf16).
    assert losses["met"] is True and losses["ours"] <= 1e-4
    sides = r"(visionbridge trainer|visionbridge checkpointed|visionbridge|llava checkpointed|llava|trl fp32|trl)"
    named = {name: float(loss) for name, loss in re.findall(sides + r" (\d+\.\d+)", losses["note"])}
    checkpointed = {"visionbridge checkpointed", "llava checkpointed"}
    assert set(named) == {"visionbridge", "llava", "visionbridge trainer", "trl", "trl fp32"} | checkpointed
    assert abs(named["trl"] - named["llava"]) < 0.05
    assert all(row["ours"] > 0 and row["reference"] > 0 and row["met"] is None for row in compared)  # tiny: not judged
    _check_ratios(compared)
    trainable = [re.search(r"trainable: ours (\d+), (?:Llava|TRL) (\d+)", row["note"]) for row in compared]
    counts = [match.groups() for match in trainable if match]
    assert len(counts) == 4 and all(ours == theirs for ours, theirs in counts)  # the same LoRA and connector
    assert "padding" in rows[-1]["note"]


def test_a_sides_peak_memory_is_its_own_not_that_of_the_process_that_started_it():
    ballast = bytearray(1024 * 2**20)
    ballast[:: 2**12] = b"\1" * len(range(0, len(ballast), 2**12))  # resident: every page written
    code = "import measure; print(measure.peak_resident_mib())"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "examples", timeout=300, check=True
    )
    assert 0 < float(run.stdout) < 900  # the child imports torch; getrusage's ru_maxrss here reads above 1024
    del ballast


def test_trl_trains_at_sftconfigs_defaults_but_for_the_harness(tmp_path, monkeypatch):
    """The benchmark sets only batch size, steps, saving, reporting, the device and the placeholder rows of TRL's
    config; SFTConfig's own defaults (bf16, gradient checkpointing, its learning rate) are what the README says."""
    from trl import SFTConfig

    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    import bench_vocab

    harness = bench_vocab._harness("cpu")
    assert set(harness) == {
        "per_device_train_batch_size",
        "max_steps",
        "save_strategy",
        "report_to",
        "disable_tqdm",
        "remove_unused_columns",
        "use_cpu",
    }
    config = SFTConfig(output_dir=str(tmp_path), **harness)
    assert config.bf16 is True and config.gradient_checkpointing is True and config.learning_rate == 2e-5
