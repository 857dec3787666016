"""Inference with a trained adapter: the base by Auto class, the adapter by `PeftModel.from_pretrained`, generate.

Needs only transformers and peft (the model's code comes with its folder or Hub repo):

    python examples/peft_inference.py --base your-org/your-vlm --adapter your-org/your-vlm-lora \\
        --image photo.jpg --question "What is in this picture?"

On the embedded default, after `bash run.sh demo` (which trains outputs/digits):

    python examples/peft_inference.py --base outputs/digits/base --adapter outputs/digits \\
        --image outputs/digits/digits/images/digit-0000.png --question "What digit is this?"
"""

import argparse

from peft import PeftModel
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the VisionBridge model the adapter was trained on")
    parser.add_argument("--adapter", required=True, help="the LoRA adapter (folder or Hub repo)")
    parser.add_argument("--image", required=True, help="an image file")
    parser.add_argument("--question", default="What is in this picture?")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    args = parser.parse_args()

    base = AutoModelForImageTextToText.from_pretrained(args.base, trust_remote_code=True)
    model = PeftModel.from_pretrained(base, args.adapter).eval()  # LoRA weights and the trained connector
    processor = AutoProcessor.from_pretrained(args.adapter, trust_remote_code=True)

    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": Image.open(args.image)}, {"type": "text", "text": args.question}],
        }
    ]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    print(processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())


if __name__ == "__main__":
    main()
