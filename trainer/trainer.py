"""VisionBridgeTrainer: the HF Trainer with one optimizer group per part, LoRA applied for you, and checks.

It overrides only what it must: construction (freezing, LoRA, collator), `create_optimizer` (per-part learning
rates), `training_step` (a non-finite loss stops the run; samples skipped as bad are counted) and the sampler
(length grouping that counts images).
"""

import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import IterableDataset
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.utils import logging

from ..compat import TRAINER_GATHERS_FSDP_WEIGHTS_FOR_GENERATE, groups_by_length
from ..modeling.atomic_save import staged_folder
from ..modeling.saving import MODEL_FILES
from .arguments import VisionBridgeTrainingArguments
from .bad_samples import DROPPED, SKIPPED, IndexedSamples
from .callbacks import GenerateUnderFsdp, GradientCheck
from .checkpoints import StagedCheckpoints
from .collator import VisionBridgeCollator
from .data import VisionBridgeDataset
from .lora import part_of, prepare_model, unwrap
from .model_card import render_model_card
from .packing import check_packing_support, row_length_for
from .qformer_pretrain import QFormerPretraining

logger = logging.get_logger(__name__)


def _refuse_deepspeed_optimizer(deepspeed) -> None:
    if deepspeed is None:
        return
    config = json.loads(Path(deepspeed).read_text()) if isinstance(deepspeed, (str, Path)) else deepspeed
    if "optimizer" in config:
        raise ValueError(
            "The DeepSpeed config defines its own `optimizer` block, which would replace the per-part learning "
            "rates (connector_lr, vision_lr) with one rate for everything. Remove the block: the Trainer then "
            "hands DeepSpeed its own optimizer."
        )


# A tokenizer without a real length limit reports a huge sentinel model_max_length.
_NO_LENGTH_LIMIT = 10**6


def _check_qlora(model: nn.Module) -> None:
    if not torch.cuda.is_available():
        raise ValueError("use_qlora needs a CUDA GPU for bitsandbytes' 4-bit kernels, and none is available here.")
    if not any(type(module).__name__ == "Linear4bit" for module in unwrap(model).language_model.modules()):
        raise ValueError(
            "use_qlora trains LoRA over a 4-bit LLM: load the model with "
            "quantization_config=BitsAndBytesConfig(load_in_4bit=True) (the vision tower, connector and LM head "
            "stay unquantized)."
        )


def _as_list(value: str | list[str] | None) -> list[str] | None:
    return [value] if isinstance(value, str) else value


def _check_collator(collator, on_bad_sample: str) -> None:
    if collator is None:
        return  # the trainer builds one with the arguments' setting
    if not isinstance(collator, VisionBridgeCollator):
        if on_bad_sample == "skip":
            raise ValueError("on_bad_sample='skip' needs the VisionBridgeCollator; leave data_collator unset.")
    elif collator.on_bad_sample != on_bad_sample:
        raise ValueError(
            f"The data_collator has on_bad_sample={collator.on_bad_sample!r} but the arguments say "
            f"{on_bad_sample!r}; leave data_collator unset or build it with the same setting."
        )


def _bind_data(processor, *datasets) -> None:
    """Datasets from load_training_data mark images with the processor's image token; an evaluation set may be a
    dict of datasets."""
    for dataset in datasets:
        for part in dataset.values() if isinstance(dataset, dict) else [dataset]:
            if isinstance(part, VisionBridgeDataset):
                part.bind(processor)


def _index_samples(dataset, collator, on_bad_sample: str):
    """The training data as the collator reads it: records numbered, bad ones skipped if asked (see bad_samples)."""
    if not isinstance(collator, VisionBridgeCollator) or dataset is None or isinstance(dataset, IterableDataset):
        return dataset  # an iterable dataset's loading errors end its iteration: they cannot be skipped one by one
    return IndexedSamples(dataset, on_bad_sample)


class VisionBridgeTrainer(StagedCheckpoints):
    def __init__(self, model: nn.Module, args: VisionBridgeTrainingArguments, data_collator=None, **kwargs):
        if not isinstance(args, VisionBridgeTrainingArguments):
            raise TypeError(f"VisionBridgeTrainer needs VisionBridgeTrainingArguments, got {type(args).__name__}.")
        _refuse_deepspeed_optimizer(args.deepspeed)
        _check_collator(data_collator, args.on_bad_sample)
        if args.use_qlora:
            _check_qlora(model)
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
        model = prepare_model(model, args)
        processor = kwargs.get("processing_class")
        dataset = kwargs.get("train_dataset")
        if processor is not None:
            _bind_data(processor, dataset, kwargs.get("eval_dataset"))
        if data_collator is None:
            if processor is None:
                raise ValueError("Pass processing_class (the VisionBridgeProcessor) or a data_collator.")
            max_length = args.model_max_length or processor.tokenizer.model_max_length
            max_length = max_length if max_length < _NO_LENGTH_LIMIT else None
            data_collator = VisionBridgeCollator(
                processor,
                model_max_length=max_length,
                on_bad_sample=args.on_bad_sample,
                packing=args.packing,
                packing_row_length=row_length_for(unwrap(model).language_model, args.packing_row_length),
            )
        if args.packing != getattr(data_collator, "packing", False):
            raise ValueError(
                f"args.packing={args.packing} but the data_collator {'does not pack' if args.packing else 'packs'}: "
                "set the same packing on both, or leave data_collator out."
            )
        if args.packing:
            check_packing_support(unwrap(model).language_model)
        kwargs["train_dataset"] = _index_samples(dataset, data_collator, args.on_bad_sample)
        # BLIP-2's first stage: its own modules beside the model, trained with it and never saved (see there).
        self.qformer_pretraining = QFormerPretraining(unwrap(model)) if args.stage == "qformer_pretrain" else None
        super().__init__(model=model, args=args, data_collator=data_collator, **kwargs)
        if self.qformer_pretraining is not None:
            if args.world_size > 1:
                raise ValueError(
                    f"stage='qformer_pretrain' runs in one process; this run has {args.world_size}. Run it alone, "
                    "then train the later stages on several."
                )
            self.qformer_pretraining.to(args.device)
        self.gradient_check = GradientCheck(enabled=not (self.is_deepspeed_enabled or self.is_fsdp_enabled))
        self.add_callback(self.gradient_check)
        if self.is_fsdp_enabled and not TRAINER_GATHERS_FSDP_WEIGHTS_FOR_GENERATE:
            self.add_callback(GenerateUnderFsdp())
        # Counted on the device, and read only when logged: reading them every step would wait for the device.
        self._supervised_tokens = self._total_tokens = 0
        self._skipped, self._skipped_reasons = 0, []  # samples skipped under on_bad_sample="skip"; the first reasons
        self._dropped, self._dropped_reasons = 0, []  # samples over model_max_length; the first reasons

    def create_model_card(
        self,
        license: str | None = None,
        tags: str | list[str] | None = None,
        finetuned_from: str | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        **kwargs,
    ) -> None:
        """Write README.md from model_card.md (push_to_hub calls it with its keyword arguments):
        `dataset_tags`/`dataset` name the data, `finetuned_from` the Hub repo an adapter applies to."""
        if not self.is_world_process_zero():
            return
        card = render_model_card(
            self.model,
            self.args.hub_model_id or Path(self.args.output_dir).name,
            self.args,
            datasets=_as_list(dataset_tags or dataset),
            license=license,
            tags=_as_list(tags),
            base_repo=finetuned_from,
        )
        card.save(Path(self.args.output_dir) / "README.md")

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        # Written beside the folder and moved in once complete: a half-written adapter never loads.
        with staged_folder(output_dir, stale=MODEL_FILES) as directory:
            super()._save(str(directory), state_dict)
            # The Trainer pickles its arguments to training_args.bin; the same arguments are kept as JSON instead.
            (directory / "training_args.bin").unlink(missing_ok=True)
            (directory / "training_args.json").write_text(self.args.to_json_string())
            # peft writes a stub README.md; the card from model_card.md replaces it (push_to_hub renders it again,
            # with the Hub names it is given).
            repo_id = self.args.hub_model_id or Path(output_dir).name
            render_model_card(self.model, repo_id, self.args).save(directory / "README.md")

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """One group per part (connector at connector_lr, LLM at learning_rate, vision at vision_lr), each split
        into weights that decay and biases/norms that do not; frozen tensors are in no group."""
        if self.optimizer is not None:
            return self.optimizer
        model = model if model is not None else self.model
        args = self.args
        # The language model's group comes first: the Trainer logs the first group's rate as learning_rate.
        rates = {
            "language_model": args.learning_rate,
            "connector": args.connector_lr or args.learning_rate,
            "vision_tower": args.vision_lr or args.learning_rate,
        }
        decaying = set(self.get_decay_parameter_names(model))
        groups = []
        for part in rates:
            for decays in (True, False):
                params = [
                    parameter
                    for name, parameter in model.named_parameters()
                    if parameter.requires_grad and part_of(name) == part and (name in decaying) == decays
                ]
                if params:
                    groups.append(
                        {
                            "name": part if decays else f"{part} (no decay)",
                            "params": params,
                            "lr": rates[part],
                            "weight_decay": args.weight_decay if decays else 0.0,
                        }
                    )
        if self.qformer_pretraining is not None:
            groups.append(
                {
                    "name": "qformer_pretrain heads",
                    "params": self.qformer_pretraining.own_parameters(),
                    "lr": rates["connector"],
                    "weight_decay": 0.0,
                }
            )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(args, model)
        own_groups = {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
        if own_groups:
            raise ValueError(
                f"optim={args.optim} builds its own parameter groups ({', '.join(sorted(own_groups))}), which would "
                "replace the per-part learning rates: choose one that takes groups (adamw_torch, adamw_8bit, "
                "adafactor, ...)."
            )
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        table = "\n".join(
            f"  {group['name']:<28} {sum(p.numel() for p in group['params']):>14,} {group['lr']:>10.2e}"
            for group in groups
        )
        logger.info(f"optimizer groups:\n  {'group':<28} {'parameters':>14} {'lr':>10}\n{table}")
        return self.optimizer

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs and int(self._total_tokens):
            # Over the steps since the previous log line, as the logged loss is.
            logs["supervised_share"] = round(float(self._supervised_tokens / self._total_tokens), 4)
            self._supervised_tokens = self._total_tokens = 0
        super().log(logs, *args, **kwargs)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint and self.qformer_pretraining is not None:
            # Its heads live beside the model and are not in checkpoints, so they would restart from fresh weights.
            raise ValueError(
                "stage='qformer_pretrain' does not resume from a checkpoint; run the stage again from the start (it "
                "takes minutes)."
            )
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        # Each process drops and skips in its own share of the data.
        dropped, skipped = (
            int(total)
            for total in self.accelerator.gather(
                torch.tensor([[self._dropped, self._skipped]], device=self.args.device)
            ).sum(0)
        )
        if dropped:
            first = "\n  ".join(self._dropped_reasons)
            logger.warning(
                f"{dropped} samples did not fit model_max_length without cutting an image and were dropped; the "
                f"first on this process:\n  {first}"
            )
        if skipped:
            first = "\n  ".join(self._skipped_reasons)
            logger.warning(
                f"{skipped} bad samples were skipped (on_bad_sample='skip'); the first on this process:\n  {first}"
            )
        output.metrics["dropped_samples"] = dropped
        output.metrics["skipped_samples"] = skipped
        return output

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False, **kwargs):
        """The Trainer's loss; where only the loss is needed (a training step, without label smoothing or a custom
        loss function), the model computes the LM head at labelled positions only (`loss_only`)."""
        inputs.pop(SKIPPED, None)  # evaluation batches; training_step has counted those of training
        inputs.pop(DROPPED, None)
        if self.qformer_pretraining is not None:
            if return_outputs:
                raise ValueError("stage='qformer_pretrain' has a training loss only: there is nothing to evaluate.")
            loss = self.qformer_pretraining.loss(unwrap(model), inputs)
            # The Trainer leaves dividing by the accumulation steps to a loss normalised by num_items_in_batch, which
            # it passes to a model like this one; the stage's loss is a mean over its batch.
            if kwargs.get("num_items_in_batch") is not None:
                loss = loss / self.current_gradient_accumulation_steps
            return loss
        if not return_outputs and self.label_smoother is None and self.compute_loss_func is None and "labels" in inputs:
            inputs = {**inputs, "loss_only": True}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)

    def training_step(self, model: nn.Module, inputs: dict, *args, **kwargs) -> torch.Tensor:
        # Counted here rather than in the collator, whose counters stay inside dataloader worker processes.
        skipped, dropped = inputs.pop(SKIPPED, []), inputs.pop(DROPPED, [])
        self._skipped += len(skipped)
        self._skipped_reasons += skipped[: 5 - len(self._skipped_reasons)]
        self._dropped += len(dropped)
        self._dropped_reasons += dropped[: 5 - len(self._dropped_reasons)]
        if "labels" in inputs:
            self._supervised_tokens += (inputs["labels"] != -100).sum()
            # A packed batch has no attention mask; its tokens are real but for the row ends of several rows.
            mask = inputs.get("attention_mask")
            self._total_tokens += mask.sum() if mask is not None else inputs["input_ids"].numel()
        self.gradient_check.saw_images |= inputs.get("pixel_values") is not None
        loss = super().training_step(model, inputs, *args, **kwargs)
        # Reading the loss forces a device sync, so it is checked on logging steps only (and on the first).
        step = self.state.global_step + 1
        if (step == 1 or step % max(self.args.logging_steps, 1) == 0) and not torch.isfinite(loss):
            raise FloatingPointError(f"The training loss is {loss.item()} at step {step}.")
        return loss

    def _get_train_sampler(self, *args, **kwargs):
        data = self.train_dataset
        if (
            groups_by_length(self.args)
            and isinstance(data, IndexedSamples)
            and isinstance(data.dataset, VisionBridgeDataset)
        ):
            # The dataset's estimate counts each image's placeholder tokens, which the tokenizer cannot see.
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            lengths = data.lengths(self.processing_class.image_seq_length)
            return LengthGroupedSampler(batch, dataset=data, lengths=lengths)
        return super()._get_train_sampler(*args, **kwargs)
