"""Run as a script in a fresh interpreter: the image-text-to-text pipeline on a saved VisionBridge folder with
trust_remote_code while `visionbridge` cannot be imported and sockets are closed; prints the answer as JSON.

usage: pipeline_check.py FOLDER IMAGE
"""

import json
import sys

from PIL import Image
from remote_load_check import NETWORK_ATTEMPTS, _block_network, _BlockVisionbridge
from transformers import pipeline


def main(folder: str, image_path: str) -> None:
    sys.meta_path.insert(0, _BlockVisionbridge())
    _block_network()
    pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    assert type(pipe.model).__module__.startswith("transformers_modules."), type(pipe.model).__module__
    content = [{"type": "image", "image": Image.open(image_path)}, {"type": "text", "text": "What is in the picture?"}]
    output = pipe(text=[{"role": "user", "content": content}], max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert not NETWORK_ATTEMPTS, NETWORK_ATTEMPTS
    print(json.dumps(output[0]["generated_text"][-1]["content"]))


if __name__ == "__main__":
    main(*sys.argv[1:3])
