"""LLaVA-1.5's two stages: align (connector only, on captions), then instruct (LoRA + connector, conversations).

With real checkpoints and LLaVA's data:

    python examples/llava_two_stage.py --vision_model openai/clip-vit-large-patch14-336 \\
        --language_model lmsys/vicuna-7b-v1.5 --align_data blip_laion_cc_sbu_558k.json \\
        --instruct_data llava_v1_5_mix665k.json --image_folder data/ --output_dir outputs/llava \\
        --align_lr 1e-3 --learning_rate 2e-4 --connector_lr 2e-5 --num_train_epochs 1 \\
        --per_device_train_batch_size 16 --warmup_ratio 0.03 --lr_scheduler_type cosine --bf16

On the embedded default (built-in tiny components; digit captions, then digit questions):

    python examples/llava_two_stage.py --output_dir outputs/llava-demo --max_steps 200

Stage 1 writes the aligned model to OUTPUT_DIR/align; stage 2 writes its adapter to OUTPUT_DIR/instruct.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from visionbridge import VisionBridgeTrainer, VisionBridgeTrainingArguments, load_training_data
from visionbridge.cli.train import ModelArguments, build_model
from visionbridge.trainer.digits import write_digits_data


@dataclass
class StageArguments:
    align_data: str | None = field(default=None, metadata={"help": "Caption data for stage 1 (default: digits)."})
    instruct_data: str | None = field(default=None, metadata={"help": "Conversations for stage 2 (default: digits)."})
    image_folder: str | None = field(default=None, metadata={"help": "Folder the image paths are relative to."})
    align_lr: float = field(default=1e-3, metadata={"help": "Connector learning rate of stage 1."})


def main() -> None:
    parser = HfArgumentParser((ModelArguments, StageArguments, VisionBridgeTrainingArguments))
    parser.set_defaults(learning_rate=2e-4, connector_lr=2e-5, per_device_train_batch_size=16)
    parser.set_defaults(report_to="none", save_strategy="no", logging_steps=50)
    model_args, stages, args = parser.parse_args_into_dataclasses()
    output_dir = Path(args.output_dir)
    model, processor, _ = build_model(model_args, output_dir)
    align_path = stages.align_data or write_digits_data(output_dir / "captions", kinds=("caption",))["train"]
    instruct_path = stages.instruct_data or write_digits_data(output_dir / "questions", kinds=("question",))["train"]
    align_data = load_training_data(align_path, stages.image_folder)
    instruct_data = load_training_data(instruct_path, stages.image_folder)

    # Stage 1: only the connector learns, at LLaVA's 1e-3, with the LLM and the tower frozen.
    align_args = dataclasses.replace(
        args, stage="align", output_dir=str(output_dir / "align"), learning_rate=stages.align_lr, connector_lr=None
    )
    aligner = VisionBridgeTrainer(model=model, args=align_args, train_dataset=align_data, processing_class=processor)
    aligner.train()
    aligner.save_model()

    # Stage 2: LoRA on the LLM, the aligned connector going on at its own rate.
    instruct_args = dataclasses.replace(args, stage="instruct", output_dir=str(output_dir / "instruct"))
    instructor = VisionBridgeTrainer(
        model=aligner.model, args=instruct_args, train_dataset=instruct_data, processing_class=processor
    )
    instructor.train()
    instructor.save_model()
    print(f"stage 1 model: {align_args.output_dir}; stage 2 adapter: {instruct_args.output_dir}")


if __name__ == "__main__":
    main()
