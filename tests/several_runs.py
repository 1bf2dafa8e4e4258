"""`umt-train` several times in one process: under `accelerate launch`, several 2-process runs for the
cost of one launch (tests/test_peer_methods_a.py). Each argument is one run's command line, quoted."""
import shlex
import sys

from umt.engine.cli import main

if __name__ == "__main__":
    for command in sys.argv[1:]:
        main(shlex.split(command))
