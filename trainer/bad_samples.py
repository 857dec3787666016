"""on_bad_sample: what a sample that fails to load or encode does to training ("raise", the default, or "skip").

Samples load in the dataset and encode in the collator, both inside dataloader worker processes when
dataloader_num_workers > 0, where a counter would never reach the trainer. So a skipped sample leaves its reason in
its batch instead, under `SKIPPED` (as a sample dropped for its length does under `DROPPED`), and the trainer pops
the reasons before the model sees the batch.
"""

from torch.utils.data import Dataset

from .data import IMAGE_ERRORS
from .options import ON_BAD_SAMPLE as ON_BAD_SAMPLE  # the collator reads it from here

# What a bad sample raises: the image errors of data.py, and the ValueErrors of records and of encoding among them.
BAD_SAMPLE_ERRORS = IMAGE_ERRORS
SKIPPED = "skipped"  # batch entry: why each sample left out of the batch was bad, one string per sample
DROPPED = "dropped"  # batch entry: why each sample over model_max_length was left out, one string per sample
RECORD = "record"  # sample entry: the sample's index in the training data, for errors
BAD_SAMPLE = "bad_sample"  # sample entry of a stand-in for a sample that failed to load: why


class IndexedSamples(Dataset):
    """A map-style dataset whose samples carry their index under `RECORD`; with on_bad_sample="skip", a sample whose
    loading fails (a missing, corrupt or oversized image) becomes `{RECORD: index, BAD_SAMPLE: reason}`."""

    def __init__(self, dataset, on_bad_sample: str = "raise"):
        self.dataset = dataset
        self.on_bad_sample = on_bad_sample

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        try:
            sample = self.dataset[index]
        except BAD_SAMPLE_ERRORS as error:
            if self.on_bad_sample == "raise":
                raise
            return {RECORD: index, BAD_SAMPLE: f"{type(error).__name__}: {error}"}
        return {**sample, RECORD: index}

    def lengths(self, image_seq_length: int) -> list[int]:
        """The wrapped dataset's length estimates for length-grouped sampling (see VisionBridgeDataset.lengths)."""
        return self.dataset.lengths(image_seq_length)
