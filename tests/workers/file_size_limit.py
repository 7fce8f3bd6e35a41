"""The CLI with every file it writes limited to LIMIT bytes: a full disk, as the writer sees it
(writes past the limit fail with EFBIG).

    python -m tests.workers.file_size_limit LIMIT CLI_ARGS...
"""

import resource
import signal
import sys

from mqsa_jax.cli import main

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
sys.exit(main(sys.argv[2:]))
