"""The vision tower runs only the blocks its features need, with no autograd graph when frozen.

(That generate encodes images at prefill only: tests/test_modeling.py::test_vision_tower_runs_once_per_generate_call.)
"""

import pytest
import torch

from visionbridge.modeling.vision_features import encoder_blocks, hidden_layer


def _pixels(model, n=2):
    size = model.config.vision_config.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def _count_calls(module, finished=True):
    """Calls of `module` that ran to the end (`finished`) or that started."""
    calls = []
    register = module.register_forward_hook if finished else module.register_forward_pre_hook
    return calls, register(lambda *args: calls.append(1))


@pytest.mark.parametrize("vision", ["clip", "siglip"])
@pytest.mark.parametrize("layer", [-2, -1, 0, 1])
def test_hidden_layer_equals_the_full_runs_hidden_state(make_model, vision, layer):
    model, _ = make_model(vision)
    pixels = _pixels(model)
    with torch.no_grad():
        expected = model.vision_tower(pixels, output_hidden_states=True).hidden_states[layer]
        assert torch.equal(hidden_layer(model.vision_tower, pixels, layer), expected)


@pytest.mark.parametrize("vision", ["clip", "siglip"])
def test_layer_minus_two_skips_the_last_block(make_model, vision):
    model, _ = make_model(vision)
    _, blocks = encoder_blocks(model.vision_tower)
    assert len(blocks) == 2
    first_calls, first_hook = _count_calls(blocks[0])
    last_calls, last_hook = _count_calls(blocks[-1])
    with torch.no_grad():
        model.get_image_features(_pixels(model))
    first_hook.remove(), last_hook.remove()
    assert (len(first_calls), len(last_calls)) == (1, 0)


def test_frozen_tower_builds_no_graph_but_the_connector_learns(make_model):
    model, _ = make_model()
    model.vision_tower.requires_grad_(False)
    seen = []
    hook = model.connector.register_forward_pre_hook(lambda module, args: seen.append(args[0].requires_grad))
    model.get_image_features(_pixels(model)).sum().backward()
    hook.remove()
    assert seen == [False]
    assert model.connector[0].weight.grad.abs().sum() > 0
    model.vision_tower.requires_grad_(True)


def test_trainable_tower_still_gets_gradients(make_model):
    model, _ = make_model()
    model.get_image_features(_pixels(model)).sum().backward()
    grads = [p.grad for p in encoder_blocks(model.vision_tower)[1][0].parameters()]
    assert all(grad is not None for grad in grads) and any(grad.abs().sum() > 0 for grad in grads)
    model.zero_grad()
