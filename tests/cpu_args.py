"""Training arguments for the test runs: on CPU, seeded, silent, and saving nothing unless a test asks."""

from pathlib import Path

from visionbridge.trainer import VisionBridgeTrainingArguments


def cpu_args(output_dir: str | Path, **settings) -> VisionBridgeTrainingArguments:
    """VisionBridgeTrainingArguments writing to `output_dir`, `settings` taking precedence over the test defaults."""
    defaults = dict(save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    return VisionBridgeTrainingArguments(output_dir=str(output_dir), **(defaults | settings))
