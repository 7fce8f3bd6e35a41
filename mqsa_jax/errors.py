"""The one exception type that means "the user gave us something wrong"."""


class UserError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits with code 2."""
