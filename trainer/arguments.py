"""VisionBridgeTrainingArguments: `TrainingArguments` plus what a VLM fine-tune needs (stage, LoRA, per-part LRs)."""

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..compat import (
    CHECKPOINTING_IS_REENTRANT_BY_DEFAULT,
    TRAINING_ARGUMENTS_HAVE_OVERWRITE_OUTPUT_DIR,
    TRAINING_ARGUMENTS_HAVE_WARMUP_RATIO,
)
from .options import ON_BAD_SAMPLE, STAGES, VisionBridgeOptions


@dataclass
class VisionBridgeTrainingArguments(VisionBridgeOptions, TrainingArguments):
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: samples are chat records that only the collator reads."}
    )
    if not TRAINING_ARGUMENTS_HAVE_WARMUP_RATIO:  # LLaVA's scripts still pass it
        warmup_ratio: float | None = field(
            default=None, metadata={"help": "Share of the training steps spent warming up (sets warmup_steps)."}
        )
    # `visionbridge train` refuses a non-empty output_dir without it.
    if not TRAINING_ARGUMENTS_HAVE_OVERWRITE_OUTPUT_DIR:
        overwrite_output_dir: bool = field(
            default=False, metadata={"help": "Write into a non-empty output_dir, over an earlier run."}
        )

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}.")
        if self.on_bad_sample not in ON_BAD_SAMPLE:
            raise ValueError(f"on_bad_sample must be one of {', '.join(ON_BAD_SAMPLE)}, got {self.on_bad_sample!r}.")
        if self.freeze_language_model is None:
            self.freeze_language_model = self.stage != "full"
        if self.stage == "full" and self.freeze_language_model:
            raise ValueError("stage='full' trains the LLM's weights: it cannot be combined with freeze_language_model.")
        # A LoRA run saves an adapter (LoRA + connector): weights trained outside it would be lost.
        if self.uses_lora and not self.freeze_vision_tower:
            raise ValueError(
                "freeze_vision_tower=False trains the tower's own weights, which a LoRA adapter does not save: "
                "use lora_vision to adapt the tower, or stage='full' without lora_vision to train it fully."
            )
        if self.stage == "instruct" and not self.freeze_language_model:
            raise ValueError(
                "stage='instruct' saves a LoRA adapter, which would not hold LLM weights trained with "
                "freeze_language_model=False: use stage='full' to train every LLM weight."
            )
        if self.stage == "full" and self.lora_vision:
            raise ValueError(
                "stage='full' with lora_vision would save only an adapter and lose the trained LLM weights: "
                "train the tower with freeze_vision_tower=False instead."
            )
        if not TRAINING_ARGUMENTS_HAVE_WARMUP_RATIO and self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
            if self.warmup_steps:
                raise ValueError("Pass warmup_ratio or warmup_steps, not both.")
            self.warmup_steps = self.warmup_ratio
        if self.stage == "qformer_pretrain" and (
            self.lora_vision or not self.freeze_language_model or not self.freeze_vision_tower or self.packing
        ):
            raise ValueError(
                "stage='qformer_pretrain' trains only the Q-Former and its query tokens on one image per sample: it "
                "cannot be combined with lora_vision, freeze_language_model=False, freeze_vision_tower=False or "
                "packing."
            )
        if self.use_qlora and self.stage != "instruct":
            raise ValueError("use_qlora trains LoRA over a frozen 4-bit LLM: it needs stage='instruct'.")
        # Reentrant checkpointing fails on a text-only batch: behind frozen embeddings no input of the checkpointed
        # layers requires grad.
        if CHECKPOINTING_IS_REENTRANT_BY_DEFAULT and self.gradient_checkpointing_kwargs is None:
            self.gradient_checkpointing_kwargs = {"use_reentrant": False}
        super().__post_init__()
        if self.stage == "qformer_pretrain" and self.eval_strategy != "no":
            raise ValueError("stage='qformer_pretrain' has a training loss only: leave eval_strategy at 'no'.")

    @property
    def uses_lora(self) -> bool:
        return self.stage == "instruct" or self.lora_vision
