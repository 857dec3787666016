"""Shared fixtures: tiny random components written to disk and joined through `from_components`."""

import os

import pytest
import torch
from digit_chats import digit_chats
from PIL import Image
from sklearn.datasets import load_sample_images

import visionbridge
from visionbridge.modeling.tiny_components import TINY_CONNECTOR_SETTINGS, build_tiny_components

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)
pytest.register_assert_rewrite("engine_checks")  # its assertions report their values, as the tests' own do


@pytest.fixture(autouse=True)
def accelerate_environment():
    """transformers 4.57's training arguments announce their precision and engine to accelerate in os.environ
    (ACCELERATE_MIXED_PRECISION, ACCELERATE_USE_DEEPSPEED, ...) for the rest of the process: what a test leaves there
    is removed after it, so that later tests, and the processes they start, train as they ask."""
    before = {name: value for name, value in os.environ.items() if name.startswith("ACCELERATE_")}
    yield
    for name in [name for name in os.environ if name.startswith("ACCELERATE_") and name not in before]:
        del os.environ[name]
    os.environ.update(before)


@pytest.fixture(scope="session")
def components(tmp_path_factory):
    """components(vision, language) -> (vision_path, language_path), built once per pair."""
    built = {}

    def get(vision: str = "clip", language: str = "llama") -> tuple[str, str]:
        if (vision, language) not in built:
            built[vision, language] = build_tiny_components(
                tmp_path_factory.mktemp(f"{vision}-{language}"), vision, language
            )
        return built[vision, language]

    return get


@pytest.fixture(scope="session")
def make_model(components):
    """make_model(vision, language, connector, **config) -> (model, processor) in eval mode, seeded."""

    def make(vision="clip", language="llama", connector="mlp2x_gelu", **kwargs):
        torch.manual_seed(0)
        kwargs = {"connector_config": TINY_CONNECTOR_SETTINGS.get(connector), **kwargs}
        model, processor = visionbridge.from_components(*components(vision, language), connector=connector, **kwargs)
        return model.eval(), processor

    return make


@pytest.fixture(scope="session")
def photos() -> list[Image.Image]:
    """The two real JPEG photos scikit-learn ships (china.jpg, flower.jpg), 427x640 RGB."""
    return [Image.fromarray(array) for array in load_sample_images().images]


@pytest.fixture(scope="session")
def digit_samples() -> list[dict]:
    """Chat samples on scikit-learn's real handwritten digits: "What digit is this?" -> "It is N."."""
    return digit_chats(64)


@pytest.fixture
def loopback_hub(tmp_path):
    """A local Hugging Face Hub (tests/loopback_hub.py) that the real huggingface_hub / transformers / peft talk to.

    Serves on a free 127.0.0.1 port; sets HF_ENDPOINT, HF_HOME (a fresh tmp dir), HF_TOKEN and HF_HUB_OFFLINE=0 in
    os.environ, so subprocesses inherit them, and patches the clients' import-time constants; all restored after.
    Yields the `LoopbackHub`: `.url`, `.token`, `.env`, `.commits(repo_id)`, `.files(repo_id, revision="main")`.
    """
    from loopback_hub import LoopbackHub, use_loopback_hub

    with LoopbackHub() as hub, use_loopback_hub(hub, tmp_path / "hf_home"):
        yield hub
