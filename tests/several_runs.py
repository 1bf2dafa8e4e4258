"""`umt-train` (or `umt-cache`) several times in one process: under `accelerate launch`, several 2-process
runs for the cost of one launch (tests/test_mmpareto_agm_pmr_dropout.py). Each argument is one run's command line,
quoted; one that starts with "umt-cache " runs the cache CLI, any other the trainer.

Each run ends with Accelerator.end_training, which destroys the process group; a second group would
have to rendezvous again through the launcher's store, so the group is kept open until the last run."""
import shlex
import sys

import torch.distributed
from accelerate.state import PartialState

from umt.cache.cli import main as cache_main
from umt.engine.cli import main

if __name__ == "__main__":
    PartialState.destroy_process_group = lambda self, group=None: None
    for command in sys.argv[1:]:
        words = shlex.split(command)
        cache_main(words[1:]) if words[0] == "umt-cache" else main(words)
    torch.distributed.destroy_process_group()
