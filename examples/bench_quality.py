"""Quality of each connector: held-out accuracy on scikit-learn's digits after a fixed training budget.

Every connector starts from the same built-in tiny components (same seed) and trains for the same budget as the
`visionbridge train` demo (LoRA on the LLM at 1e-3, the connector at its own learning rate, cosine schedule), with
the recipe the README gives for it (RECIPES); the score is the share of held-out digits (never trained on) whose
answer names the right digit.

    python examples/bench_quality.py --size 100m
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

CONNECTORS = ("linear", "mlp2x_gelu", "pixel_shuffle", "qformer", "resampler")
# The tiny size only shows that the section runs; the goal is judged at the full budget. `pretrain_steps`: BLIP-2's
# first stage, for the connectors whose recipe has it.
BUDGETS = {
    "tiny": {"steps": 2, "pretrain_steps": 2, "held_out": 8},
    "full": {"steps": 2000, "pretrain_steps": 2000, "held_out": None},
}
# Each connector's recipe (README, Connectors): the patch connectors at the demo's connector_lr, the query connectors
# at their own default_lr (1e-3), the Q-Former after BLIP-2's first stage on the digits' captions; seed 0, the
# cosine schedule without warm-up.
RECIPES = {
    "linear": {"connector_lr": 3e-3},
    "mlp2x_gelu": {"connector_lr": 3e-3},
    "pixel_shuffle": {"connector_lr": 3e-3},
    "qformer": {"connector_lr": 1e-3, "qformer_pretrain": True},
    "resampler": {"connector_lr": 1e-3},
}
GOAL_CONNECTOR, GOAL_ACCURACY, GOAL_SECONDS = "mlp2x_gelu", 0.95, 300  # seconds of training, wall clock


def _quiet_run(device: str) -> dict:
    """The training arguments both stages share: batch 16 at lr 1e-3, seed 0, nothing logged, saved or reported."""
    return dict(
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=device == "cpu",
        disable_tqdm=True,
    )


def pretrain_qformer(model, processor, captions: dict, folder: Path, steps: int, device: str) -> None:
    """BLIP-2's first stage: `steps` of image-text contrast on the digits' captions, warming up over a tenth."""
    import visionbridge
    from visionbridge.trainer import load_training_data

    args = visionbridge.VisionBridgeTrainingArguments(
        output_dir=str(folder / "qformer_pretrain"),
        stage="qformer_pretrain",
        max_steps=steps,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=steps // 10,
        **_quiet_run(device),
    )
    visionbridge.VisionBridgeTrainer(
        model=model, args=args, train_dataset=load_training_data(captions["train"]), processing_class=processor
    ).train()


def train_and_score(connector: str, components: tuple[str, str], data: dict, folder: Path, budget: dict, device: str):
    """(held-out accuracy, training wall seconds, training CPU seconds of this process, held-out count, recipe),
    the times those of both stages where the recipe has two."""
    import visionbridge
    from visionbridge.modeling.tiny_components import TINY_CONNECTOR_SETTINGS
    from visionbridge.trainer import load_training_data
    from visionbridge.trainer.evaluation import evaluate

    torch.manual_seed(0)
    settings = TINY_CONNECTOR_SETTINGS.get(connector)
    model, processor = visionbridge.from_components(*components, connector=connector, connector_config=settings)
    recipe = RECIPES[connector]
    start, cpu_start = time.perf_counter(), time.process_time()
    if recipe.get("qformer_pretrain"):
        pretrain_qformer(model, processor, data["captions"], folder, budget["pretrain_steps"], device)
    args = visionbridge.VisionBridgeTrainingArguments(
        output_dir=str(folder / connector),
        max_steps=budget["steps"],
        connector_lr=recipe.get("connector_lr"),
        lr_scheduler_type="cosine",
        **_quiet_run(device),
    )
    trainer = visionbridge.VisionBridgeTrainer(
        model=model, args=args, train_dataset=load_training_data(data["train"]), processing_class=processor
    )
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    held_out = load_training_data(data["held_out"])
    if budget["held_out"] is not None:
        held_out = [held_out[index] for index in range(budget["held_out"])]
    report = evaluate(trainer.model, processor, held_out, max_new_tokens=4, progress=False)
    described = f"connector lr {recipe['connector_lr']:g}" + (
        f", after {budget['pretrain_steps']} steps of qformer_pretrain" if recipe.get("qformer_pretrain") else ""
    )
    return report["accuracy"], seconds, cpu_seconds, report["count"], described


def run(size: str, device: str) -> list[dict]:
    """One row per connector: held-out accuracy after the budget (`tiny`: a few steps; otherwise the full one)."""
    from visionbridge.modeling.tiny_components import build_tiny_components
    from visionbridge.trainer.digits import write_digits_data

    budget = BUDGETS["tiny" if size == "tiny" else "full"]
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        components = build_tiny_components(folder / "components")
        data = write_digits_data(folder / "digits")
        data["captions"] = write_digits_data(folder / "captions", kinds=("caption",))
        for connector in CONNECTORS:
            accuracy, seconds, cpu_seconds, count, recipe = train_and_score(
                connector, components, data, folder, budget, device
            )
            judged = connector == GOAL_CONNECTOR and size != "tiny"
            rows.append(
                dict(
                    section="quality",
                    metric=f"held-out digit accuracy, {connector}",
                    ours=accuracy,
                    reference=None,
                    ratio=None,
                    goal=f">= {GOAL_ACCURACY} within {GOAL_SECONDS} s" if connector == GOAL_CONNECTOR else "reported",
                    met=(accuracy >= GOAL_ACCURACY and seconds <= GOAL_SECONDS) if judged else None,
                    note=f"{budget['steps']} steps of batch 16 ({recipe}) in {seconds:.0f} s wall, "
                    f"{cpu_seconds:.0f} s CPU ({device}, {torch.get_num_threads()} threads); {count} held-out digits",
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="100m", choices=["tiny", "100m", "all"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    print(json.dumps(run(args.size, args.device), indent=1))


if __name__ == "__main__":
    main()
