"""Run as a script in a fresh interpreter (visionbridge blocked, HF_ENDPOINT/HF_HOME/HF_TOKEN from the caller):
load a base model and an adapter by repo id and write the logits on saved inputs.

usage: hub_load_check.py BASE_REPO ADAPTER_REPO INPUTS OUT [ADAPTER_REVISION]
"""

import importlib.util
import json
import sys

import transformers
from peft import PeftModel
from safetensors.torch import load_file, save_file


class _BlockVisionbridge:
    def find_spec(self, name, path=None, target=None):
        if name == "visionbridge" or name.startswith("visionbridge."):
            raise ImportError(f"{name} must not be importable in this check")
        return None


def main(base_repo: str, adapter_repo: str, inputs_file: str, out: str, revision: str | None = None) -> None:
    sys.meta_path.insert(0, _BlockVisionbridge())
    try:
        importlib.util.find_spec("visionbridge")
        raise SystemExit("visionbridge is importable; the check would prove nothing")
    except ImportError:
        pass
    inputs = load_file(inputs_file)
    base = transformers.AutoModelForImageTextToText.from_pretrained(base_repo, trust_remote_code=True)
    model = PeftModel.from_pretrained(base, adapter_repo, revision=revision).eval()
    processor = transformers.AutoProcessor.from_pretrained(base_repo, trust_remote_code=True)
    tensors = {"logits": model(**inputs).logits.detach().contiguous()}
    if hasattr(transformers, "AutoModelForVision2Seq"):  # transformers 4.x: the older Auto class, same repo
        old_base = transformers.AutoModelForVision2Seq.from_pretrained(base_repo, trust_remote_code=True)
        old_model = PeftModel.from_pretrained(old_base, adapter_repo, revision=revision).eval()
        tensors["logits_vision2seq"] = old_model(**inputs).logits.detach().contiguous()
    save_file(tensors, f"{out}.safetensors")
    with open(f"{out}.json", "w") as handle:
        json.dump({"class": type(base).__module__, "processor": type(processor).__name__}, handle)


if __name__ == "__main__":
    main(*sys.argv[1:])
