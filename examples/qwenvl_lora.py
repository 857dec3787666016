"""Qwen-VL-style LoRA: a resampler connector, Qwen-VL JSON with several pictures per turn and grounding boxes.

With real checkpoints (a SigLIP encoder and a Qwen2 LM) and data in Qwen-VL's format
(`Picture 1: <img>a.jpg</img>` in the text, `<ref>phrase</ref><box>(x1,y1),(x2,y2)</box>` in [0,1000)):

    python examples/qwenvl_lora.py --vision_model google/siglip-so400m-patch14-384 \\
        --language_model Qwen/Qwen2-7B-Instruct --data_path qwen_vl_chat.json --output_dir outputs/qwenvl-lora \\
        --learning_rate 1e-4 --connector_lr 1e-4 --num_train_epochs 1 --per_device_train_batch_size 4 --bf16

On the embedded default (built-in tiny components; pairs of digits to name, digits on a canvas to locate):

    python examples/qwenvl_lora.py --output_dir outputs/qwenvl-demo --max_steps 200

After training it asks for a box and draws what it answers on the canvas (OUTPUT_DIR/grounded.png).
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import HfArgumentParser

from visionbridge import VisionBridgeTrainer, VisionBridgeTrainingArguments, draw_boxes, load_training_data
from visionbridge.cli.train import ModelArguments, build_model
from visionbridge.processing.grounding import format_box
from visionbridge.trainer.digits import digit_image, split_indices
from visionbridge.trainer.evaluation import answer_batch


@dataclass
class QwenDataArguments:
    data_path: str | None = field(default=None, metadata={"help": "Qwen-VL JSON (default: built-in digit pairs)."})
    image_folder: str | None = field(default=None, metadata={"help": "Folder the image paths are relative to."})


def write_digit_pairs(folder: Path, count: int = 400) -> Path:
    """Qwen-VL records on training digits: two pictures to name, and a 64x32 canvas with a digit to locate."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, _ = split_indices(digits.target)
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for number in range(count):
        first, second = (int(index) for index in rng.choice(train, 2, replace=False))
        names = []
        for index in (first, second):
            names.append(f"images/digit-{index:04d}.png")
            digit_image(digits.images[index]).save(folder / names[-1])
        canvas = Image.new("RGB", (64, 32), "white")
        left = int(rng.integers(0, 2)) * 32  # the digit sits in the left or the right half
        canvas.paste(digit_image(digits.images[first]), (left, 0))
        canvas_name = f"images/canvas-{number:04d}.png"
        canvas.save(folder / canvas_name)
        label = int(digits.target[first])
        box = format_box(f"the digit {label}", (left, 0, left + 31, 31), canvas.size)
        records.append(
            {
                "id": f"pair-{number}",
                "conversations": [
                    {
                        "from": "user",
                        "value": f"Picture 1: <img>{names[0]}</img>\nPicture 2: <img>{names[1]}</img>\n"
                        "Which digits are these?",
                    },
                    {"from": "assistant", "value": f"{label} and {int(digits.target[second])}"},
                    {"from": "user", "value": f"<img>{canvas_name}</img>\nWhere is the digit {label}?"},
                    {"from": "assistant", "value": box},
                ],
            }
        )
    path = folder / "pairs.json"
    path.write_text(json.dumps(records, indent=1))
    return path


def main() -> None:
    parser = HfArgumentParser((ModelArguments, QwenDataArguments, VisionBridgeTrainingArguments))
    parser.set_defaults(connector="resampler", learning_rate=1e-3, connector_lr=1e-3, per_device_train_batch_size=8)
    parser.set_defaults(report_to="none", save_strategy="no", logging_steps=50)
    model_args, data_args, args = parser.parse_args_into_dataclasses()
    output_dir = Path(args.output_dir)
    model, processor, _ = build_model(model_args, output_dir)
    data_path = data_args.data_path or write_digit_pairs(output_dir / "pairs")
    data = load_training_data(data_path, data_args.image_folder, format="qwen")

    trainer = VisionBridgeTrainer(model=model, args=args, train_dataset=data, processing_class=processor)
    trainer.train()
    trainer.save_model()

    sample = data[0]
    (answer,) = answer_batch(trainer.model, processor, [sample], max_new_tokens=32)
    canvas = sample["images"][-1]
    print(f"asked: {sample['messages'][-2]['content']!r}\nanswer: {answer!r}")
    draw_boxes(canvas, answer).save(output_dir / "grounded.png")
    print(f"boxes drawn on {output_dir / 'grounded.png'}")


if __name__ == "__main__":
    main()
