"""The `visionbridge` command: train, chat, merge, convert, eval.

Each subcommand lives in its own module with a `main(argv)`; `visionbridge COMMAND --help` describes it.
"""

import importlib
import sys

COMMANDS = {
    "train": ("train", "fine-tune a VisionBridge model (every TrainingArguments flag works)"),
    "chat": ("chat", "talk to a model about images, with history, in the terminal"),
    "merge": ("merge", "merge a LoRA adapter into its base model and write a Hub-ready folder"),
    "convert": ("convert", "convert a LLaVA (llava-hf) or BLIP-2 checkpoint into a VisionBridge folder"),
    "eval": ("evaluate", "score a model's answers on a data file and write a JSON report"),
}


def _usage() -> str:
    lines = ["usage: visionbridge COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<9} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run 'visionbridge COMMAND --help' for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    if argv[0] not in COMMANDS:
        sys.exit(f"visionbridge: unknown command {argv[0]!r}.\n\n{_usage()}")
    module = importlib.import_module(f".{COMMANDS[argv[0]][0]}", __name__)
    module.main(argv[1:])
