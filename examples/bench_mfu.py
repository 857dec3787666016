"""Model FLOPs utilisation of a LoRA training step at a 7B-shaped config on a CUDA GPU (random weights, bf16, SDPA).

The model is LLaVA-1.5-7B's shape: a CLIP ViT-L/14 tower at 336 px (576 patches, layer -2), an mlp2x_gelu
connector and a LLaMA-7B-shaped LM, built directly on the GPU with random weights. The FLOPs of one step
(forward + backward, as run: the frozen tower has no backward, the frozen LM weights get no weight gradients) are
counted by `torch.utils.flop_counter.FlopCounterMode`; MFU = those FLOPs / median step time / the GPU's dense bf16
peak.

    python examples/bench_mfu.py
"""

import argparse
import json
import statistics
import time

import torch

VISION = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    patch_size=14,
    image_size=336,
)
TEXT = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32064)
BATCH, TEXT_TOKENS, WARMUP, STEPS = 4, 64, 2, 5
# Dense bf16 peak, TFLOP/s, by device name (first match); SXM parts unless the name says PCIe.
PEAK_TFLOPS = (("H100 PCIe", 756), ("H100", 989), ("H200", 989), ("A100", 312), ("L40S", 362), ("L4", 121))
LORA_TARGETS = r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def build_model():
    from transformers import CLIPVisionConfig, LlamaConfig

    from visionbridge import VisionBridgeConfig, VisionBridgeForConditionalGeneration

    vision, text = CLIPVisionConfig(**VISION), LlamaConfig(**TEXT)
    vision._attn_implementation = text._attn_implementation = "sdpa"
    config = VisionBridgeConfig(vision_config=vision, text_config=text, image_token_id=TEXT["vocab_size"] - 1)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = VisionBridgeForConditionalGeneration(config)
    torch.set_default_dtype(torch.float32)
    return model


def peak_flops() -> float | None:
    name = torch.cuda.get_device_name()
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS if key in name), None)


def run(size: str, device: str) -> list[dict]:
    """One size only (7B-shaped); `size` is ignored. Needs `device == "cuda"`."""
    from peft import LoraConfig, get_peft_model
    from torch.utils.flop_counter import FlopCounterMode

    if device != "cuda":
        raise ValueError("The MFU section measures a GPU: run it with --device cuda.")
    torch.manual_seed(0)
    model = build_model()
    config = model.config
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS, modules_to_save=["connector"]
    )
    model = get_peft_model(model, lora).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    text = torch.randint(4, TEXT["vocab_size"] - 1, (BATCH, TEXT_TOKENS), device="cuda")
    image = torch.full((BATCH, config.image_seq_length), config.image_token_id, device="cuda")
    input_ids = torch.cat([image, text], dim=1)  # [B, 576 + T]
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(BATCH, 3, 336, 336, device="cuda", dtype=torch.bfloat16),
        "labels": input_ids.masked_fill(input_ids == config.image_token_id, -100),
    }

    def step():
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    counter = FlopCounterMode(display=False)
    with counter:
        model(**inputs).loss.backward()
    optimizer.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()

    times = []
    for _ in range(WARMUP + STEPS):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[WARMUP:])
    peak = peak_flops()
    where = f"{torch.cuda.get_device_name()}, bf16, SDPA, batch {BATCH} x {input_ids.shape[1]} tokens"
    row = dict(section="mfu", reference=None, ratio=None)
    return [
        dict(row, metric="training step, s (7B-shaped)", ours=seconds, goal="reported", met=None, note=where),
        dict(
            row,
            metric="model FLOPs utilisation (7B-shaped)",
            ours=flops / seconds / peak if peak else float("nan"),
            goal="reported",
            met=None,
            note=f"{flops / 1e12:.1f} TFLOP per step (counted), peak {peak / 1e12 if peak else 'unknown'} TFLOP/s",
        ),
        dict(
            row,
            metric="peak memory, GiB (7B-shaped)",
            ours=torch.cuda.max_memory_allocated() / 2**30,
            goal="reported",
            met=None,
            note="torch.cuda.max_memory_allocated",
        ),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    print(json.dumps(run("7b", "cuda"), indent=1))
