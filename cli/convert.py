"""`visionbridge convert`: between VisionBridge folders and the formats that other tools load and serve.

    visionbridge convert --from llava llava-hf/llava-1.5-7b-hf ./llava-1.5-7b-visionbridge
    visionbridge convert --from blip2 Salesforce/blip2-opt-2.7b ./blip2-opt-2.7b-visionbridge
    visionbridge convert --to llava ./my-vlm ./my-vlm-llava

--from reads a transformers LlavaForConditionalGeneration (llava-hf) or Blip2ForConditionalGeneration (decoder-only
LM) checkpoint and writes a VisionBridge folder with its processor, remote code and model card. --to llava writes a
VisionBridge model with an mlp2x_gelu connector as a llava-hf folder (LlavaForConditionalGeneration and a
LlavaProcessor), which vLLM, SGLang and TGI serve natively. Either way the folder is written beside DESTINATION
and renamed into place at the end.
"""

from .usage import CommandParser, UsageError, empty_destination, model_source


def build_parser() -> CommandParser:
    parser = CommandParser("visionbridge convert", __doc__)
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--from", dest="source_format", choices=["llava", "blip2"], help="format of the source checkpoint"
    )
    direction.add_argument(
        "--to", dest="target_format", choices=["llava"], help="format to write a VisionBridge model in"
    )
    parser.add_argument("source", help="Hub id or local folder of the source checkpoint")
    parser.add_argument("destination", help="new folder to write the converted model into")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    model_source(args.source, "source")
    destination = empty_destination(args.destination, "destination")

    from .. import register_auto_classes

    register_auto_classes()  # first: it imports the package's parts in the order they need
    from ..modeling import from_blip2, from_llava, to_llava
    from .common import save_complete

    if args.target_format == "llava":
        from ..modeling.atomic_save import staged_folder
        from ..modeling.convert_llava import llava_processor
        from ..modeling.saving import MODEL_FILES
        from .common import load_for_inference

        model, processor = load_for_inference(args.source)
        try:
            llava, llava_preprocessing = to_llava(model), llava_processor(processor, model.config)
        except ValueError as error:
            raise UsageError(f"{args.source} cannot be written as a llava-hf model: {error}") from None
        with staged_folder(destination, stale=MODEL_FILES) as staging:
            llava.save_pretrained(staging)
            llava_preprocessing.save_pretrained(staging)
        print(f"converted VisionBridge model {args.source} -> llava-hf folder {destination}")
        return
    convert = {"llava": from_llava, "blip2": from_blip2}[args.source_format]
    model, processor = convert(args.source)
    save_complete(destination, model, processor)
    print(f"converted {args.source_format} checkpoint {args.source} -> {destination}")
