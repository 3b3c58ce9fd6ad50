"""Domain errors: each becomes a one-line message and a non-zero exit at the CLI edge."""


class DownloadDbError(Exception):
    """Base class: a problem the user can act on (message is shown as is)."""

    exit_code = 1


class InputError(DownloadDbError):
    """The input file is missing, unreadable, or not a multimedia.txt."""

    exit_code = 2


class DatabaseError(DownloadDbError):
    """The database is missing, in the wrong state for this command, or not ours."""

    exit_code = 3


class PrerequisiteFailed(DatabaseError):
    """The stage this one depends on failed (an array task, an unfinished ingest): the
    stage did not run and its run is recorded as prerequisite_failed."""


class UsageError(DownloadDbError):
    """Flags that do not go together."""

    exit_code = 64


class NetworkDown(DownloadDbError):
    """The node lost its network (failures on many hosts at once) for --offline-timeout:
    resubmit the job on another node; nothing was spent on the images."""

    exit_code = 69


class StorageError(DownloadDbError):
    """The image root cannot be written (disk full, read-only, quota)."""

    exit_code = 73


class Interrupted(DownloadDbError):
    """Stopped by a signal at a safe point; running the same command continues."""

    exit_code = 75


class CheckFailed(DownloadDbError):
    """The integrity check found a disagreement (details were printed above)."""

    exit_code = 1
