"""Checkpoints that exist whole or not at all, and resuming only from one that holds the whole training state.

Resuming with `resume_from_checkpoint=True` (or `get_last_checkpoint`) takes the highest `checkpoint-N` folder,
and the HF Trainer writes that folder file by file under its final name: a run killed mid-save would leave a
half-written checkpoint that the next run resumes from. Here each checkpoint is written into a staging folder
beside the run directory (outside it, so that a push of the run directory never uploads it) and published as
`checkpoint-N` in one step (modeling/atomic_save.py), also over a `checkpoint-N` saved before.
"""

import os
from contextlib import ExitStack
from pathlib import Path

from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..compat import TRAINER_ROTATES_IN_A_METHOD
from ..modeling.atomic_save import publish, staging_folder, staging_path

TRAINER_STATE_NAME = "trainer_state.json"
SCHEDULER_NAME = "scheduler.pt"
# The Trainer's optimizer state: optimizer.pt, optimizer.bin, or a folder or shards named after it (FSDP, SageMaker).
OPTIMIZER_STEM = "optimizer"


class StagedCheckpoints(Trainer):
    """Trainer whose `_save_checkpoint` writes through a staging folder and whose resume refuses a checkpoint
    without the optimizer or scheduler state; everything else is the HF Trainer's."""

    _staging_dir: str | None = None

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is written, the Trainer's run directory is the staging folder.
        return self._staging_dir or super()._get_output_dir(trial=trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(super()._get_output_dir(trial=trial)).absolute()
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        with ExitStack() as stack:
            # Every process writes its RNG state into the checkpoint, so the staging folder has a name they all
            # know; the processes that save create it (removing those of dead runs) and remove it at the end.
            staging = staging_path(run_dir, name)
            if self.args.should_save:
                staging = stack.enter_context(staging_folder(run_dir, token=name))
            self.accelerator.wait_for_everyone()
            self._staging_dir = str(staging)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging_dir = None
            self.accelerator.wait_for_everyone()  # every process has written its RNG state
            if self.args.should_save:
                if self.state.best_model_checkpoint == str(staging / name):
                    self.state.best_model_checkpoint = str(run_dir / name)
                    self.state.save_to_json(str(staging / name / TRAINER_STATE_NAME))
                publish(staging / name, run_dir / name, keep_others=False)
                # The Trainer rotated the staging folder; the real run directory is rotated here.
                self._rotate_run_dir(run_dir)
        self.accelerator.wait_for_everyone()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self._staging_dir is not None:
            # The model's save swaps in its folder, the checkpoint; only then may the other processes write their RNG
            # states into it, or a file written during the swap would stay in the folder swapped out.
            self.accelerator.wait_for_everyone()

    def _rotate_run_dir(self, run_dir: Path) -> None:
        if TRAINER_ROTATES_IN_A_METHOD:
            self._rotate_checkpoints(use_mtime=False, output_dir=str(run_dir))
            return
        from transformers.trainer_utils import rotate_checkpoints

        rotate_checkpoints(
            output_dir=str(run_dir),
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=False,
        )

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        # The HF Trainer starts a fresh optimizer or scheduler when its file is missing, and the run then differs
        # from an uninterrupted one. DeepSpeed keeps both in its own checkpoint files.
        if checkpoint is not None and not self.is_deepspeed_enabled:
            entries = os.listdir(checkpoint)
            missing = []
            if not any(entry.startswith(OPTIMIZER_STEM) for entry in entries):
                missing.append(f"{OPTIMIZER_STEM}.pt (the optimizer state)")
            if SCHEDULER_NAME not in entries:
                missing.append(f"{SCHEDULER_NAME} (the learning-rate schedule)")
            if missing:
                raise FileNotFoundError(
                    f"Cannot resume from {checkpoint}: it holds no {' and no '.join(missing)}, so training would "
                    "continue differently from an uninterrupted run. Resume from a checkpoint saved whole (not with "
                    "save_only_model=True), or start the run again without resume_from_checkpoint."
                )
        super()._load_optimizer_and_scheduler(checkpoint)
