"""The `loopback_hub` fixture (tests/loopback_hub.py) driven by the real huggingface_hub, transformers and peft."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.utils import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_clean(hub) -> None:
    """Every request had a route, and the clients never went for LFS or Xet."""
    assert hub.unhandled == []
    assert not [path for _, path, _ in hub.requests if "lfs" in path.lower() or "xet" in path.lower()]


def test_upload_snapshot_and_old_commits(loopback_hub, tmp_path):
    api = HfApi()
    assert api.whoami()["name"] == "tester"
    assert api.create_repo("org/files").repo_id == "org/files"
    assert api.create_repo("org/files", exist_ok=True).repo_id == "org/files"
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo("org/files")
    assert conflict.value.response.status_code == 409

    folder = tmp_path / "upload"
    (folder / "sub" / "dir").mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden_size": 32}')
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 64 + os.urandom(4096))
    (folder / "sub" / "dir" / "notes.txt").write_text("hello\n")
    first = api.upload_folder(repo_id="org/files", folder_path=folder, commit_message="first").oid

    assert loopback_hub.commits("org/files")[-1] == first
    assert api.model_info("org/files").sha == first
    assert sorted(api.list_repo_files("org/files")) == [".gitattributes", *read_tree(folder)]
    snapshot = Path(snapshot_download("org/files"))
    assert snapshot.name == first
    gitattributes = loopback_hub.files("org/files")[".gitattributes"]
    assert read_tree(snapshot) == {**read_tree(folder), ".gitattributes": gitattributes}

    old = read_tree(folder)
    (folder / "weights.bin").write_bytes(os.urandom(5000))
    second = api.upload_folder(repo_id="org/files", folder_path=folder, commit_message="second").oid
    commits = loopback_hub.commits("org/files")
    assert len(commits) == 3 and commits[1:] == [first, second]
    assert [c.commit_id for c in api.list_repo_commits("org/files")] == commits[::-1]
    assert Path(hf_hub_download("org/files", "weights.bin")).read_bytes() == (folder / "weights.bin").read_bytes()
    assert Path(hf_hub_download("org/files", "weights.bin", revision=first)).read_bytes() == old["weights.bin"]
    assert read_tree(Path(snapshot_download("org/files", revision=first))) == read_tree(snapshot)
    assert api.model_info("org/files", revision=first[:10]).sha == first
    assert loopback_hub.files("org/files", first)["weights.bin"] == old["weights.bin"]

    # A subprocess finds the hub, the token and HF_HOME from the environment alone.
    script = f"""if True:
        from huggingface_hub import HfApi, hf_hub_download
        print(HfApi().whoami()["name"], HfApi().model_info("org/files").sha)
        print(hf_hub_download("org/files", "weights.bin", revision="{first}", cache_dir={str(tmp_path / "c")!r}))
    """
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    who, downloaded = done.stdout.strip().splitlines()[-2:]
    assert who == f"tester {second}"
    assert Path(downloaded).read_bytes() == old["weights.bin"]
    assert Path(downloaded).is_relative_to(tmp_path / "c")
    assert_clean(loopback_hub)


def test_errors(loopback_hub, tmp_path):
    api = HfApi()
    api.create_repo("org/guarded")
    before = loopback_hub.commits("org/guarded")
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(HfHubHTTPError) as unauthorized:
        HfApi(token=False).upload_file(path_or_fileobj=b"x", path_in_repo="a.txt", repo_id="org/guarded")
    assert unauthorized.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as unauthorized:
        HfApi(token=False).upload_folder(repo_id="org/guarded", folder_path=tmp_path)
    assert unauthorized.value.response.status_code == 401
    assert loopback_hub.commits("org/guarded") == before

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/missing", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("org/missing")
    with pytest.raises(EntryNotFoundError) as missing:
        hf_hub_download("org/guarded", "missing.json")
    assert missing.value.response.status_code == 404
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("org/guarded", ".gitattributes", revision="no-such-branch")
    with pytest.raises(HfHubHTTPError) as forbidden:
        api.create_repo("someone-else/repo")
    assert forbidden.value.response.status_code == 403
    assert_clean(loopback_hub)


def tiny_llama_and_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = ["a tiny model sees a tiny world", "the loopback hub keeps every commit", "hello world"] * 4
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


def fingerprint(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().float().numpy().tobytes())
    return digest.hexdigest()


OFFLINE_LOAD = """
import hashlib, json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("org/tiny")
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode() + tensor.detach().float().numpy().tobytes())
ids = AutoTokenizer.from_pretrained("org/tiny")("hello tiny world")["input_ids"]
print(json.dumps({"fingerprint": digest.hexdigest(), "ids": ids}))
"""


def test_transformers_push_then_load_online_and_offline(loopback_hub):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = tiny_llama_and_tokenizer()
    model.push_to_hub("org/tiny")
    tokenizer.push_to_hub("org/tiny")
    assert len(loopback_hub.commits("org/tiny")) == 3
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(loopback_hub.files("org/tiny"))

    loaded = AutoModelForCausalLM.from_pretrained("org/tiny")
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    ids = AutoTokenizer.from_pretrained("org/tiny")("hello tiny world")["input_ids"]
    assert ids == tokenizer("hello tiny world")["input_ids"]
    assert_clean(loopback_hub)

    loopback_hub.stop()  # the subprocess can only succeed from the HF_HOME cache
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", OFFLINE_LOAD], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"fingerprint": fingerprint(model), "ids": ids}


def test_peft_adapter_round_trip(loopback_hub):
    from peft import LoraConfig, PeftModel, get_peft_model

    base, _ = tiny_llama_and_tokenizer()
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.push_to_hub("org/tiny-lora")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(loopback_hub.files("org/tiny-lora"))

    fresh, _ = tiny_llama_and_tokenizer()
    loaded = PeftModel.from_pretrained(fresh, "org/tiny-lora")
    expected = {k: v for k, v in lora.state_dict().items() if "lora_" in k}
    got = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert expected.keys() == got.keys() and expected
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=name)
    assert_clean(loopback_hub)
