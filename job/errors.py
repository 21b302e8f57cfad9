"""One exception type for every problem a user can fix: the CLI prints it as one line and exits non-zero."""


class UserError(Exception):
    """A bad input or environment. The message names the problem and the fix; no traceback is shown."""

    exit_code = 2


class DataError(UserError):
    """A dataset archive is missing, corrupted or has the wrong format."""


class ConfigError(UserError):
    """A config file, key or value is wrong."""


class StorageUnavailableError(UserError):
    """The run's storage could not be reached within the retry budget. Reported in one line like a UserError, but a
    later attempt may well succeed, so the exit code is the retriable one (Kubernetes retries the pod)."""

    exit_code = 1


class DiskFullError(UserError):
    """A local disk (the run directory or the working copy) ran out of space. The environment's problem, not the
    input's: freeing space and running the same command again resumes, so the exit code is the retriable one."""

    exit_code = 1


# Exit codes, chosen so Kubernetes' podFailurePolicy can tell them apart (k8s/job.yaml relies on these numbers).
EXIT_OK = 0
EXIT_CRASH = 1  # unexpected error: counts against the Job's backoffLimit
EXIT_USER_ERROR = UserError.exit_code  # bad config/input: retrying cannot help, the Job fails at once
EXIT_PREEMPTED = 75  # SIGTERM/SIGINT: a checkpoint was committed, run the same command again to resume (EX_TEMPFAIL)
EXIT_PEER_LOST = 76  # another worker died or a collective timed out: restart the whole job to resume


def first_line(error: object, limit: int = 300) -> str:
    """An exception (or any message) as one line for a one-line report: its first line, or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
