import sys

from mqsa_jax.cli import main

sys.exit(main())
