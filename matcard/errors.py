"""Exceptions that the CLI maps to exit codes (1 runtime failure, 2 bad usage)."""

from __future__ import annotations


class MatcardError(Exception):
    """A runtime failure with a message meant for the user (exit code 1)."""

    exit_code = 1


class UsageError(MatcardError):
    """Bad input from the user: unknown dataset, task or option value (exit code 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """An invalid configuration; the message names the offending field."""


class DownloadError(MatcardError):
    """A download failed (network, missing file on the mirror)."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its registered sha256."""


class BundleError(MatcardError):
    """A model bundle is missing, damaged or was edited after it was written (exit code 1).

    ``field`` names the part of the bundle at fault (``model.name``, ``featurizer``, ``weights.pt``).
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


_DETAIL_LIMIT = 500


def plain_reason(exc: BaseException) -> tuple[str, str]:
    """(short plain sentence for users, raw ``Type: message`` for the ``detail`` column).

    Used where one item (a structure being featurized or predicted) fails and the batch goes on.
    MatcardError messages are already written for users; other exceptions are translated by type,
    so a report says "division by zero" rather than ``ZeroDivisionError: integer modulo by zero``.
    """
    message = str(exc).strip()
    detail = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    detail = detail[:_DETAIL_LIMIT]
    first_line = message.splitlines()[0] if message else ""
    if isinstance(exc, MatcardError) and first_line:
        return first_line[:200], detail
    reason = _REASONS_BY_TYPE.get(type(exc))
    if reason is None:
        for kind, text in _REASONS_BY_BASE:
            if isinstance(exc, kind):
                reason = text
                break
        else:
            reason = f"unexpected error ({type(exc).__name__})"
    if isinstance(exc, OSError) and getattr(exc, "filename", None):
        reason = f"{reason}: {exc.filename}"
    return reason, detail


_REASONS_BY_TYPE: dict[type, str] = {
    FileNotFoundError: "file not found",
    IsADirectoryError: "is a folder, not a file",
    PermissionError: "permission denied",
    TimeoutError: "timed out",
}
_REASONS_BY_BASE: tuple[tuple[type, str], ...] = (
    (ZeroDivisionError, "division by zero: the structure is probably degenerate (no atoms or a flat cell)"),
    (FloatingPointError, "numerical error: the structure is probably degenerate"),
    (OverflowError, "numerical overflow: the structure is probably degenerate"),
    (MemoryError, "out of memory: the structure is too large"),
    (UnicodeError, "the file is not valid text (encoding error)"),
    (OSError, "cannot read the file"),
    (AttributeError, "not a crystal structure this model can use"),
    (TypeError, "not a crystal structure this model can use"),
    (KeyError, "missing data in the structure"),
    (IndexError, "inconsistent structure data"),
    (ValueError, "invalid structure data"),
    (RuntimeError, "the model could not process this structure"),
)
