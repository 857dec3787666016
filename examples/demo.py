"""The main job on the embedded default: build a VisionBridge model from built-in tiny components and ask it
about one of the two photos scikit-learn ships.

    bash run.sh demo        (or: python examples/demo.py inside an environment with visionbridge installed)

The components have random weights, so the answer is noise until the model is trained; everything else (the
checkpoints on disk, from_components, the chat template, image placeholders, generation, the saved Hub folder
and its reload through the Auto classes) is the path a real CLIP + LLaMA pair takes.
"""

import tempfile
from pathlib import Path

from PIL import Image
from sklearn.datasets import load_sample_images
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import logging

import visionbridge
from visionbridge.modeling.tiny_components import build_tiny_components


def main() -> None:
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    workdir = Path(tempfile.mkdtemp(prefix="visionbridge-demo-"))
    vision_path, language_path = build_tiny_components(workdir, vision="clip", language="llama")
    model, processor = visionbridge.from_components(vision_path, language_path, connector="mlp2x_gelu")
    print(f"built {type(model).__name__}: {model.num_parameters():,} parameters, connector {model.config.connector}")

    photo = Image.fromarray(load_sample_images().images[0])  # china.jpg, 640x427
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=photo, text=prompt)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"prompt: {prompt}")
    print(f"answer (untrained model): {answer!r}")

    folder = workdir / "visionbridge-tiny"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    reloaded = AutoModelForImageTextToText.from_pretrained(folder)
    again = reloaded.generate(**AutoProcessor.from_pretrained(folder)(images=photo, text=prompt), max_new_tokens=12)
    assert again.tolist() == output.tolist(), "the saved folder must give the same answer"
    print(f"saved a Hub-ready folder to {folder} and reloaded it: same answer")


if __name__ == "__main__":
    main()
