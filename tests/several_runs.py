"""`umt-train` several times in one process: under `accelerate launch`, several 2-process runs for the
cost of one launch (tests/test_peer_methods_a.py). Each argument is one run's command line, quoted.

Each run ends with Accelerator.end_training, which destroys the process group; a second group would
have to rendezvous again through the launcher's store, so the group is kept open until the last run."""
import shlex
import sys

import torch.distributed
from accelerate.state import PartialState

from umt.engine.cli import main

if __name__ == "__main__":
    PartialState.destroy_process_group = lambda self, group=None: None
    for command in sys.argv[1:]:
        main(shlex.split(command))
    torch.distributed.destroy_process_group()
