"""The small error tree every adapter translates its driver errors into.

Ingest and api map these to DICOM statuses and HTTP codes; nothing above infra
ever sees a sqlite3, botocore, confluent_kafka or clickhouse exception.
"""


class ChronicleError(Exception):
    """Base of every error raised across a port boundary."""


class Unavailable(ChronicleError):
    """The backend cannot take or serve the request now (down, full, timed out).

    Maps to C-STORE 0xA700 / HTTP 503 with Retry-After.
    """


class Conflict(ChronicleError):
    """The request contradicts what is already kept (e.g. a blob key with other bytes)."""


class NotFound(ChronicleError):
    """The thing asked for does not exist."""


class Invalid(ChronicleError):
    """The input is malformed or violates a limit. Maps to 0xC000-range / HTTP 400.

    `status` is the DICOM status (C-STORE) / STOW FailureReason to report:
    0xC000 cannot understand (default), 0xA900 data set does not match SOP
    class, 0x0122 SOP class not supported, 0xA700 too large to keep.
    """

    def __init__(self, message: str, status: int = 0xC000) -> None:
        super().__init__(message)
        self.status = status
