"""Run as a script in a fresh interpreter: load a saved VisionBridge folder through the Auto classes with
trust_remote_code while `visionbridge` cannot be imported and no socket can be opened, and write its logits,
greedy tokens and any network access attempted.

usage: remote_load_check.py FOLDER IMAGE OUT
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file


class _BlockVisionbridge:
    def find_spec(self, name, path=None, target=None):
        if name == "visionbridge" or name.startswith("visionbridge."):
            raise ImportError(f"{name} must not be importable in this check")
        return None


NETWORK_ATTEMPTS: list[str] = []


def _refuse(what: str):
    """Record the attempt (a caller might swallow the error) and fail it."""

    def refused(*args, **kwargs):
        NETWORK_ATTEMPTS.append(what)
        raise OSError(f"network access attempted while loading remote code: {what}")

    return refused


def _block_network() -> None:
    """No socket can be created, connected or resolved from here on."""
    socket.socket.connect = _refuse("socket.connect")  # sockets of the class already imported elsewhere
    socket.socket.connect_ex = _refuse("socket.connect_ex")
    socket.socket = type("RefusedSocket", (socket.socket,), {"__init__": _refuse("socket.socket")})
    socket.getaddrinfo = _refuse("socket.getaddrinfo")
    socket.create_connection = _refuse("socket.create_connection")


def main(folder: str, image_path: str, out: str) -> None:
    sys.meta_path.insert(0, _BlockVisionbridge())
    _block_network()
    try:
        importlib.util.find_spec("visionbridge")
        raise SystemExit("visionbridge is importable; the check would prove nothing")
    except ImportError:
        pass

    processor = transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.open(image_path), text=prompt)

    loaders = [transformers.AutoModelForImageTextToText]
    if hasattr(transformers, "AutoModelForVision2Seq"):
        loaders.append(transformers.AutoModelForVision2Seq)
    results, tensors = {"transformers": transformers.__version__, "loaders": []}, {}
    saved = load_file(f"{folder}/model.safetensors")
    for loader in loaders:
        model = loader.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        state = model.state_dict()
        # The file keeps the nested vision-tower keys; transformers 5 flattens them for CLIP and SigLIP towers.
        flat = {key: key.replace("vision_tower.vision_model.", "vision_tower.", 1) for key in saved}
        differing = [
            key for key, tensor in saved.items() if not torch.equal(state.get(key, state.get(flat[key])), tensor)
        ]
        with torch.no_grad():
            logits = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        results["loaders"].append(
            {
                "name": loader.__name__,
                "class": type(model).__name__,
                "differing_tensors": differing,
                "tokens": tokens[0, inputs["input_ids"].shape[1] :].tolist(),
            }
        )
        tensors[f"logits_{loader.__name__}"] = logits.contiguous()
    results["network_attempts"] = NETWORK_ATTEMPTS
    tensors["input_ids"] = inputs["input_ids"].contiguous()
    tensors["pixel_values"] = inputs["pixel_values"].contiguous()
    save_file(tensors, f"{out}.safetensors")
    with open(f"{out}.json", "w") as handle:
        json.dump(results, handle)


def run_check(python: str, folder, image, workdir: Path, offline: bool = True) -> tuple[dict, dict]:
    """Run this script under `python` (a fresh interpreter without PYTHONPATH, HF caches of its own in `workdir`;
    offline, or online with every socket blocked by the script) and return its report and tensors."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_HUB_OFFLINE")}
    env.update(HF_MODULES_CACHE=str(workdir / "modules"), HF_HOME=str(workdir / "hf"))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    run = subprocess.run(
        [python, __file__, str(folder), str(image), str(workdir / "out")],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((workdir / "out.json").read_text()), load_file(workdir / "out.safetensors")


if __name__ == "__main__":
    main(*sys.argv[1:4])
