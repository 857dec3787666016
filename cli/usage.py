"""What the commands check before anything is loaded: their arguments, the paths they name and the models they
will load. A mistake ends the command with one line on stderr and exit code 2 (see `cli.main`)."""

import argparse
import difflib
from pathlib import Path

DTYPES = ("auto", "float32", "bfloat16", "float16")


class UsageError(Exception):
    """A mistake in how a command was called: reported as one line, exit code 2."""


class OneLineErrors:
    """An argparse parser whose errors raise UsageError (one line) instead of printing the usage block."""

    def error(self, message: str):
        unknown = message.removeprefix("unrecognized arguments: ")
        if unknown != message:
            message = unknown_options(unknown.split(), self.option_names())
        raise UsageError(f"{message} (see {self.prog} --help)")

    def option_names(self) -> list[str]:
        return [option for action in self._actions for option in action.option_strings]


class CommandParser(OneLineErrors, argparse.ArgumentParser):
    def __init__(self, prog: str, description: str, **kwargs):
        super().__init__(
            prog=prog,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,  # a typo such as --imag is reported, not read as --image
            **kwargs,
        )


def unknown_options(arguments: list[str], known: list[str]) -> str:
    """'unknown option --lerning_rate (did you mean --learning_rate?)' for the arguments a parser did not take
    (the values that follow an unknown option are left out)."""
    options = [argument for argument in arguments if argument.startswith("-")]
    if not options:
        return f"unexpected argument{'s' if len(arguments) > 1 else ''} {' '.join(arguments)}"
    parts = []
    for option in options:
        close = difflib.get_close_matches(option.split("=")[0], known, n=1)
        parts.append(f"{option} (did you mean {close[0]}?)" if close else option)
    return f"unknown option{'s' if len(parts) > 1 else ''} {', '.join(parts)}"


def model_source(value: str, flag: str, marker: str = "config.json") -> str:
    """`value` as a model to load: a local folder holding `marker`, or a Hub repo id (checked when loading)."""
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / marker).is_file():
            hint = " (an adapter folder? pass it with --adapter)" if (path / "adapter_config.json").is_file() else ""
            raise UsageError(f"{flag} {value} has no {marker}{hint}")
        return str(path)
    if path.exists():
        raise UsageError(f"{flag} {value} is a file; expected a folder or a Hub repo id")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        raise UsageError(
            f"{flag} {value} does not exist (neither a folder here nor a Hub repo id like org/name)"
        ) from None
    return value


def existing_path(value: str | None, flag: str, folder: bool | None = None) -> str | None:
    """`value` if it exists (and is a folder or a file, when `folder` says which); None stays None."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise UsageError(f"{flag} {value} does not exist")
    if folder is True and not path.is_dir():
        raise UsageError(f"{flag} {value} is a file; expected a folder")
    if folder is False and path.is_dir():
        raise UsageError(f"{flag} {value} is a folder; expected a file")
    return str(path)


def empty_destination(value: str, flag: str) -> Path:
    """`value` as a new folder to write: it may exist only if empty, and its parent must be a folder."""
    path = Path(value).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"{flag} {value} exists and is not empty; choose a new folder")
    if path.parent.exists() and not path.parent.is_dir():
        raise UsageError(f"{flag} {value}: {path.parent} is a file")
    return path


def local_image(value: str, flag: str):
    """The RGB image at `value`, opened now, so that a bad image is reported before any model loads; read as
    training data and `model.chat` read theirs (an image over Pillow's MAX_IMAGE_PIXELS is refused)."""
    from ..processing.images import open_image, to_rgb
    from ..trainer.data import IMAGE_ERRORS

    if "://" in value:
        raise UsageError(f"{flag} takes local image files, not URLs: download {value} first")
    path = existing_path(value, flag, folder=False)
    try:
        return to_rgb(open_image(path))
    except IMAGE_ERRORS as error:
        raise UsageError(f"{flag} {value} cannot be read as an image: {error}") from None
