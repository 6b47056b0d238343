"""Failure reasons from parser exceptions."""

from __future__ import annotations


def _error_reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, NotImplementedError):
        return f"unsupported: {text[:300]}"
    return f"parse error: {type(err).__name__}: {text[:300]}"
