"""The two ways an ingest fails, each naming the file, where and why."""

from __future__ import annotations


class SourceFileError(ValueError):
    """The file as a whole cannot be ingested.

    Raised before anything is sent, except for a file that changed while it was being sent.
    """


class DeliveryError(RuntimeError):
    """Some rows did not reach the stream. The ingest is incomplete and must be run again."""

    def __init__(self, message: str, *, rows_not_sent: int, error_code: str, error_message: str):
        super().__init__(message)
        self.rows_not_sent = rows_not_sent
        self.error_code = error_code
        self.error_message = error_message
