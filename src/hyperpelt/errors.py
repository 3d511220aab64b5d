"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user: an unknown name, a malformed file, a mistyped config key.

    The message names the item (file and line where there is one) and is shown without a traceback.
    """
