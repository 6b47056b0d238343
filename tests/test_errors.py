"""plain_reason: per-item failures become short sentences, the raw exception stays in the detail."""

from __future__ import annotations

from pathlib import Path

import pytest

from matcard.errors import BundleError, MatcardError, UsageError, plain_reason


def _raised(action) -> BaseException:
    try:
        action()
    except BaseException as exc:  # the test wants whatever was raised
        return exc
    raise AssertionError("nothing was raised")


def test_real_exceptions_become_plain_sentences():
    reason, detail = plain_reason(_raised(lambda: 7 % 0))
    assert reason.startswith("division by zero") and "ZeroDivisionError" not in reason
    assert detail == "ZeroDivisionError: integer modulo by zero"
    reason, detail = plain_reason(_raised(lambda: Path("/nonexistent.cif").read_text()))
    assert reason == "file not found: /nonexistent.cif" and detail.startswith("FileNotFoundError: ")
    reason, detail = plain_reason(_raised(lambda: "POSCAR".lattice))
    assert reason == "not a crystal structure this model can use"
    assert detail == "AttributeError: 'str' object has no attribute 'lattice'"


def test_matcard_messages_are_kept_and_odd_exceptions_named():
    assert plain_reason(MatcardError("sites are 0.001 Å apart\nmore"))[0] == "sites are 0.001 Å apart"

    class Odd(Exception):
        pass

    assert plain_reason(Odd("x")) == ("unexpected error (Odd)", "Odd: x")
    assert len(plain_reason(ValueError("v" * 5000))[1]) <= 500


@pytest.mark.parametrize("error", [BundleError("bad", field="model")])
def test_bundle_errors_are_runtime_failures(error):
    assert error.exit_code == 1 and error.field == "model" and not isinstance(error, UsageError)
