"""A connector is one class and one registry line: one defined here, outside visionbridge, trains, saves and
loads through the Auto classes and, carried as remote code, in a fresh interpreter without visionbridge."""

import json
import sys
from pathlib import Path

import pytest
import torch
from connector_pooled import PooledConnector
from cpu_args import cpu_args
from fresh_interpreter import interpreter, saved_with_photo
from remote_load_check import run_check
from transformers import AutoModelForImageTextToText

import visionbridge
from visionbridge.modeling.connectors import CONNECTORS


@pytest.fixture(scope="module")
def trained_pooled(components, digit_samples, photos, tmp_path_factory):
    """(model, processor, folder, photo path, inputs, logits): the registered connector trained and saved."""
    visionbridge.register_connector("pooled", PooledConnector)
    try:
        torch.manual_seed(0)
        model, processor = visionbridge.from_components(*components(), connector="pooled", connector_config={"grid": 3})
        before = model.connector.proj.weight.detach().clone()
        tmp_path = tmp_path_factory.mktemp("pooled")
        args = cpu_args(tmp_path / "run", stage="align", per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2)
        trainer = visionbridge.VisionBridgeTrainer(
            model=model, args=args, train_dataset=digit_samples[:12], processing_class=processor
        )
        trainer.train()
        assert not torch.equal(model.connector.proj.weight, before)
        yield (model.eval(), processor, *saved_with_photo(model.eval(), processor, photos[0], tmp_path))
    finally:
        CONNECTORS.pop("pooled", None)


def test_it_trains_saves_and_loads_through_the_auto_classes(trained_pooled):
    model, processor, folder, _, inputs, expected = trained_pooled
    assert model.config.image_seq_length == processor.image_seq_length == 9
    config = json.loads((folder / "config.json").read_text())
    assert config["connector_config"] == {"grid": 3, "shipped_class": "connector_pooled.PooledConnector"}
    assert (folder / "connector_pooled.py").read_text() == (Path(__file__).parent / "connector_pooled.py").read_text()
    loaded = AutoModelForImageTextToText.from_pretrained(folder).eval()  # registered here: the package's class
    assert type(loaded.connector) is PooledConnector
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, expected)


def test_where_it_is_not_registered_its_code_runs_only_when_trusted(trained_pooled, monkeypatch):
    folder = trained_pooled[2]
    monkeypatch.delitem(CONNECTORS, "pooled")
    with pytest.raises(ValueError, match=r"connector 'pooled' runs code saved with the model .*trust_remote_code=True"):
        AutoModelForImageTextToText.from_pretrained(folder)
    loaded = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(loaded.connector).__module__.startswith("transformers_modules.")
    with torch.no_grad():
        assert torch.equal(loaded(**trained_pooled[4]).logits, trained_pooled[5])


@pytest.mark.parametrize("which", ["this line", "other line"])
def test_it_loads_in_a_fresh_interpreter_without_visionbridge(trained_pooled, tmp_path, which):
    _, _, folder, photo, inputs, expected = trained_pooled
    report, tensors = run_check(interpreter(which), folder, photo, tmp_path)
    assert torch.equal(tensors["input_ids"], inputs["input_ids"])
    for entry in report["loaders"]:
        assert entry["differing_tensors"] == []
        assert torch.allclose(tensors[f"logits_{entry['name']}"], expected, atol=1e-5)


@pytest.mark.parametrize("name", ["mlp2x_gelu", "mlp5x_gelu", "qformer"])
def test_a_built_in_connectors_name_is_refused(name):
    with pytest.raises(ValueError, match=f"'{name}' names one of visionbridge's connectors"):
        visionbridge.register_connector(name, PooledConnector)
    assert visionbridge.modeling.connectors.registered_connector(name) is not PooledConnector


def test_a_connector_file_importing_other_packages_is_refused_at_save(tmp_path, monkeypatch):
    """Its file travels alone with the model: an import of anything but torch, transformers and the standard
    library would fail where the model loads."""
    import importlib.util

    from visionbridge.modeling.remote_code import connector_sources

    source = Path(__file__).with_name("connector_pooled.py").read_text()
    (tmp_path / "connector_numpy.py").write_text("import numpy\n" + source)
    spec = importlib.util.spec_from_file_location("connector_numpy", tmp_path / "connector_numpy.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "connector_numpy", module)
    spec.loader.exec_module(module)
    with pytest.raises(ValueError, match="self-contained file .* it imports numpy"):
        connector_sources(module.PooledConnector, built_in=False)
    assert connector_sources(PooledConnector, built_in=False)[1] == "connector_pooled.PooledConnector"
