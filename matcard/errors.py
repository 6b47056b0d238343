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
