"""Set-up shared by the tests that load a saved model in a fresh interpreter (remote_load_check.py): which
interpreter, and a saved model folder with a photo and the logits to expect."""

import os
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import BatchFeature

PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]


def saved_with_photo(
    model, processor, photo: Image.Image, tmp_path: Path
) -> tuple[Path, Path, BatchFeature, torch.Tensor]:
    """Save model and processor to tmp_path/model and `photo` as a JPEG beside it; return the two paths, the
    processor's inputs for PROMPT on the photo as read back, and the model's logits on them."""
    folder, photo_path = tmp_path / "model", tmp_path / "photo.jpg"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    photo.save(photo_path)
    text = processor.apply_chat_template(PROMPT, add_generation_prompt=True)
    inputs = processor(images=Image.open(photo_path), text=text)
    with torch.no_grad():
        return folder, photo_path, inputs, model(**inputs).logits


def interpreter(which: str) -> str:
    """sys.executable for "this line"; for "other line" the interpreter of the other transformers line."""
    if which == "this line":
        return sys.executable
    other = os.environ.get("VISIONBRIDGE_OTHER_PYTHON")
    if not other:
        if os.environ.get("CI"):
            pytest.fail("CI must set VISIONBRIDGE_OTHER_PYTHON to the interpreter of the other transformers line")
        pytest.skip("VISIONBRIDGE_OTHER_PYTHON is not set: the cross-line load is checked where it is (CI)")
    return other
