"""One exception type for every problem a user can fix: the CLI prints it as one line and exits non-zero."""


class UserError(Exception):
    """A bad input or environment. The message names the problem and the fix; no traceback is shown."""

    exit_code = 2


class DataError(UserError):
    """A dataset archive is missing, corrupted or has the wrong format."""


class ConfigError(UserError):
    """A config file, key or value is wrong."""
