from mqsa_jax.cli import entry

entry()
