"""Run as a script in a fresh interpreter where visionbridge cannot be imported: load through trust_remote_code
(1) a LoRA adapter onto a base it was not trained on and (2) a folder without connector weights; write the
class modules seen and the error messages to OUT as JSON.

usage: remote_error_check.py BASE ADAPTER FOLDER_WITHOUT_CONNECTOR OUT
"""

import json
import sys

import transformers
from peft import PeftModel
from remote_load_check import _BlockVisionbridge


def _error(load) -> str | None:
    try:
        load()
    except ValueError as error:
        return str(error)
    return None


def main(base: str, adapter: str, without_connector: str, out: str) -> None:
    sys.meta_path.insert(0, _BlockVisionbridge())
    model = transformers.AutoModelForImageTextToText.from_pretrained(base, trust_remote_code=True)
    report = {
        "module": type(model).__module__,
        "adapter_error": _error(lambda: PeftModel.from_pretrained(model, adapter)),
        "connector_error": _error(
            lambda: transformers.AutoModelForImageTextToText.from_pretrained(without_connector, trust_remote_code=True)
        ),
    }
    with open(out, "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main(*sys.argv[1:5])
