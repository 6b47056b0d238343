"""Failure reasons: a parser exception as a short plain sentence, the raw exception kept as detail.

``plain_reason(exc) -> (reason, detail)`` is the one mapping the structure readers use; ``reason`` is
what a user reads in tables, ``detail`` (``"TypeName: message"``) goes to ``ReadFailure.detail``,
failures.csv and ``inspect --json`` for whoever needs to debug the parser.
"""

from __future__ import annotations

import re

DETAIL_CHARS = 2000
# pymatgen wraps the per-block problems of an unparsable CIF into this message (see cif.py).
_NO_STRUCTURE = re.compile(r"^no structure could be built \((?P<inner>.*)\)$", re.S)
_MESSAGE_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"could not convert string to float: (?P<v>'.*?')"), "a numeric field holds text {v}"),
    (re.compile(r"thickness=.*below threshold"), "the cell is nearly flat (thickness below threshold)"),
    (re.compile(r"occupancies \(\[?(?P<v>[\d.]+).*?sum to > 1", re.S),
     "site occupancies sum to {v}, more than 1"),
    (re.compile(r"no usable atom sites|No structure parsed", re.I), "no usable atom sites"),
    (re.compile(r"Incommensurate", re.I), "unsupported: incommensurate structures"),
    (re.compile(r"Error tokenizing data.*?line (?P<line>\d+), saw (?P<saw>\d+)", re.S),
     "malformed table: line {line} has {saw} fields, more than the header (unquoted comma or comment line?)"),
)  # fmt: skip
_TYPE_RULES: tuple[tuple[str, str], ...] = (
    ("ZeroDivisionError", "degenerate values in the file (a division by zero while building the structure)"),
    ("UnicodeDecodeError", "not a text file (undecodable bytes)"),
    ("JSONDecodeError", "not valid JSON"),
    ("MemoryError", "too large to parse in memory"),
    ("RecursionError", "nested too deeply to parse"),
    ("EmptyDataError", "empty table (no columns)"),
    ("ParserError", "malformed table (pandas could not split it into rows and columns)"),
    ("KeyError", "a required field is missing"),
    ("IndexError", "the file ends early or a list in it is incomplete"),
    ("StopIteration", "the file ends early"),
)


def _detail(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:DETAIL_CHARS]


def plain_reason(exc: BaseException) -> tuple[str, str]:
    """(short plain sentence, raw ``TypeName: message``) for an exception raised while reading."""
    detail = _detail(exc)
    message = " ".join(str(exc).split())
    inner = _NO_STRUCTURE.match(message)
    for pattern, template in _MESSAGE_RULES:
        found = pattern.search(message)
        if found:
            return template.format(**found.groupdict()), detail
    if inner:
        return "no structure could be built", detail
    names = {cls.__name__ for cls in type(exc).__mro__}
    for name, sentence in _TYPE_RULES:
        if name in names:
            if name == "KeyError" and message:
                return f"a required field is missing ({message[:60]})", detail
            return sentence, detail
    if isinstance(exc, NotImplementedError):
        return f"unsupported: {message[:120]}" if message else "unsupported file content", detail
    if isinstance(exc, OSError):
        return f"could not be read ({exc.strerror or type(exc).__name__})", detail
    if isinstance(exc, ValueError) and message and len(message) <= 120:
        return f"invalid content: {message}", detail  # short ValueErrors are already sentences
    return f"the parser failed ({type(exc).__name__}; see detail)", detail


def _error_reason(err: BaseException) -> str:
    """The reason alone (kept for callers of the single-module version)."""
    return plain_reason(err)[0]
