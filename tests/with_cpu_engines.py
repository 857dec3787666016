"""Run a script, or a module with -m, with DeepSpeed and FSDP2 allowed on CPU (see cpu_engines.py):

torchrun --nproc_per_node 2 with_cpu_engines.py engine_train.py OUT zero3
accelerate launch --config_file ../examples/fsdp2.yaml with_cpu_engines.py -m visionbridge train ...
"""

import os
import runpy
import sys

from cpu_engines import use_engines_on_cpu

if __name__ == "__main__":
    use_engines_on_cpu()
    try:
        if sys.argv[1] == "-m":
            sys.argv = sys.argv[2:]
            runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
        else:
            sys.argv = sys.argv[1:]
            runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    # Every collective has completed; skip interpreter teardown, where gloo's worker threads can abort the
    # process ("terminate called without an active exception") while the other rank is still exiting.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
