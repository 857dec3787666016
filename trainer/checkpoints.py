"""Checkpoints that exist whole or not at all.

Resuming with `resume_from_checkpoint=True` (or `get_last_checkpoint`) takes the highest `checkpoint-N` folder,
and the HF Trainer writes that folder file by file under its final name: a run killed mid-save would leave a
half-written checkpoint that the next run resumes from. Here each checkpoint is written under a hidden staging
folder beside the run directory (outside it, so that a push of the run directory never uploads it) and renamed
to `checkpoint-N` once complete (a rename is atomic on one filesystem).
"""

import os
import shutil
from pathlib import Path

from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..compat import TRAINER_ROTATES_IN_A_METHOD

TRAINER_STATE_NAME = "trainer_state.json"


class StagedCheckpoints(Trainer):
    """Trainer whose `_save_checkpoint` writes through a staging folder; everything else is the HF Trainer's."""

    _staging_dir: str | None = None

    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is written, the Trainer's run directory is the staging folder.
        return self._staging_dir or super()._get_output_dir(trial=trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(super()._get_output_dir(trial=trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final = run_dir / name
        staging = run_dir.resolve().parent / f".{run_dir.name}.partial-checkpoints" / name
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # what a killed run left behind
        self.accelerator.wait_for_everyone()
        self._staging_dir = str(staging.parent)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if self.args.should_save:
            if self.state.best_model_checkpoint == str(staging):
                self.state.best_model_checkpoint = str(final)
                self.state.save_to_json(str(staging / TRAINER_STATE_NAME))
            _replace_folder(staging, final)
            shutil.rmtree(staging.parent, ignore_errors=True)
            # The Trainer rotated the staging folder; the real run directory is rotated here.
            self._rotate_run_dir(run_dir)
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


def _replace_folder(source: Path, target: Path) -> None:
    """Rename `source` to `target`; an existing `target` (the same step saved again) is moved aside first."""
    if target.exists():
        aside = target.with_name(f".{target.name}.old")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(target, aside)
        os.replace(source, target)
        shutil.rmtree(aside)
    else:
        os.replace(source, target)
