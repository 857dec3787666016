"""DeepSpeed and FSDP2 in the suite's CPU runs (gloo), where accelerate would not hand them to the Trainer.

With `use_cpu`, accelerate's state stays MULTI_CPU: it takes the DeepSpeed plugin only where `cpu` is off, and the
FSDP plugin only on a GPU-like device, dropping it without a word, so the Trainer would run plain DDP. Torch's
`fully_shard` runs on CPU over gloo and DeepSpeed has a CPU accelerator, so forcing that one choice lets the suite
run the engines' own code (sharding, gathering, reducing, saving) on CPU. Tests only: on GPUs accelerate picks the
engine itself. with_cpu_engines.py calls `use_engines_on_cpu()` before it runs a script.
"""

import importlib

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType


def use_engines_on_cpu() -> None:
    original = AcceleratorState.__init__

    def init(self, *args, deepspeed_plugin=None, fsdp_plugin=None, cpu: bool = False, **kwargs) -> None:
        partial = PartialState._shared_state
        if partial.get("distributed_type") == DistributedType.MULTI_CPU and fsdp_plugin is not None:
            # The branch that keeps an FSDP plugin is taken for GPU-like distributed types only.
            partial["distributed_type"] = DistributedType.MULTI_GPU
        if deepspeed_plugin is not None:
            cpu = False  # the branch that keeps a DeepSpeed plugin is taken without `cpu` only
        original(self, *args, deepspeed_plugin=deepspeed_plugin, fsdp_plugin=fsdp_plugin, cpu=cpu, **kwargs)

    AcceleratorState.__init__ = init
    # DeepSpeed's CPU accelerator compiles a shared-memory all-reduce on first use (a C++ build, a minute or more
    # here) that only its inference path calls; training reduces through torch.distributed.
    # (`deepspeed.comm.torch` as an attribute is the torch package, which that module imports.)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
