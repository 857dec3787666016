"""`visionbridge merge BASE ADAPTER DESTINATION`: fold a LoRA adapter into its base, as one Hub-ready folder.

The base is loaded unquantised (in the dtype given, float32 by default) whatever it was trained over, so QLoRA
adapters merge into full-precision weights. The connector trained with the adapter replaces the base's. Before
anything is written, the merged model's logits on a probe image and prompt are compared with base + adapter;
the folder (weights, processor, remote code and a README.md model card) is written beside DESTINATION and renamed
into place at the end.
"""

import sys

from .usage import DTYPES, CommandParser, empty_destination, model_source


def build_parser() -> CommandParser:
    parser = CommandParser("visionbridge merge", __doc__)
    parser.add_argument("base", help="the VisionBridge model the adapter was trained on (folder or Hub repo)")
    parser.add_argument("adapter", help="the LoRA adapter (folder or Hub repo)")
    parser.add_argument("destination", help="new folder for the merged model")
    parser.add_argument(
        "--dtype", default="float32", choices=DTYPES[1:], help="dtype of the merged weights (default: float32)"
    )
    parser.add_argument(
        "--atol", type=float, default=None, help="largest logit difference accepted (default: 1e-4 fp32, 5e-2 else)"
    )
    parser.add_argument("--trust_remote_code", action="store_true", help="allow checkpoints that ship their own code")
    return parser


def _probe(processor, model) -> dict:
    """A fixed image and prompt: a gradient square and a question, as the processor renders them."""
    import torch
    from PIL import Image

    gradient = torch.linspace(0, 255, 64).to(torch.uint8).repeat(64, 1)
    image = Image.fromarray(gradient.numpy()).convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Describe."}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True).to(model.device)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    model_source(args.base, "base")
    model_source(args.adapter, "adapter", marker="adapter_config.json")
    destination = empty_destination(args.destination, "destination")

    import torch

    from .common import load_for_inference, save_complete, training_arguments

    model, processor = load_for_inference(args.base, args.adapter, args.trust_remote_code, args.dtype)
    inputs = _probe(processor, model)
    with torch.no_grad():
        expected = model(**inputs).logits.float()
        merged = model.merge_and_unload()
        difference = (merged(**inputs).logits.float() - expected).abs().max().item()
    atol = args.atol if args.atol is not None else (1e-4 if args.dtype == "float32" else 5e-2)
    if difference > atol:
        sys.exit(f"The merged model's logits differ from base + adapter by {difference:.2e} (> {atol}); not saved.")
    save_complete(destination, merged, processor, training_arguments(args.adapter))
    print(f"merged {args.adapter} into {args.base} -> {destination} (largest logit difference {difference:.1e})")
