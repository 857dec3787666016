"""The `visionbridge` command: train, chat, merge, convert, eval.

Each subcommand lives in its own module with a `main(argv)` that parses and checks its arguments before it
imports torch or transformers' models, so that --help answers at once and a mistake is reported before anything
loads: as one line on stderr, with exit code 2. `visionbridge COMMAND --help` describes each.
"""

import difflib
import importlib
import logging
import sys

from .usage import UsageError

COMMANDS = {
    "train": ("train", "fine-tune a VisionBridge model (every TrainingArguments flag works)"),
    "chat": ("chat", "talk to a model about images, with history, in the terminal"),
    "merge": ("merge", "merge a LoRA adapter into its base model and write a Hub-ready folder"),
    "convert": ("convert", "convert a LLaVA or BLIP-2 checkpoint to VisionBridge, or a VisionBridge model to LLaVA"),
    "eval": ("evaluate", "score a model's answers on a data file and write a JSON report"),
}


def _usage() -> str:
    lines = ["usage: visionbridge COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<9} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run 'visionbridge COMMAND --help' for the options of a command; 'visionbridge --version'."]
    return "\n".join(lines)


def _quiet_deepspeed_probe() -> None:
    """Where DeepSpeed is installed, accelerate imports it whenever a model is saved (to unwrap a DeepSpeed engine),
    and on a machine without a GPU DeepSpeed then warns that it runs on its CPU accelerator: noise in a run that does
    not use DeepSpeed, and no news to one that does."""
    logging.getLogger("DeepSpeed").addFilter(lambda record: "Setting accelerator to CPU" not in record.getMessage())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    if argv[0] == "--version":
        from .. import __version__

        print(f"visionbridge {__version__}")
        return
    command = argv[0]
    try:
        if command not in COMMANDS:
            close = difflib.get_close_matches(command, COMMANDS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"unknown command {command!r}{hint}; commands: {', '.join(COMMANDS)}")
        _quiet_deepspeed_probe()
        module = importlib.import_module(f".{COMMANDS[command][0]}", __name__)
        module.main(argv[1:])
    except UsageError as error:
        prog = "visionbridge" if command not in COMMANDS else f"visionbridge {command}"
        print(f"{prog}: {error}", file=sys.stderr)
        sys.exit(2)
