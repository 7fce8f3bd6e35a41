"""The CLI, hanging inside the Orbax save of the latest checkpoint of epoch 3.

    python -m tests.workers.hang_in_save MARKER CLI_ARGS...

It writes MARKER once it is there, so that a test can kill it in the middle of the save.
"""

import sys
import time
from pathlib import Path

import orbax.checkpoint as ocp

from mqsa_jax.cli import main

original = ocp.StandardCheckpointHandler.async_save


def hanging(self, directory, *args, **kwargs):
    if "latest" in str(directory) and "/3.orbax-checkpoint-tmp" in str(directory):
        Path(sys.argv[1]).write_text("saving")
        time.sleep(600)
    return original(self, directory, *args, **kwargs)


ocp.StandardCheckpointHandler.async_save = hanging
sys.exit(main(sys.argv[2:]))
