"""matcard.names (torch-free name lists used to validate configs) must equal the registries."""

from __future__ import annotations

import subprocess
import sys

from matcard import names
from matcard.losses import LOSSES
from matcard.losses.base import _ALIASES
from matcard.models import MODELS


def test_name_lists_equal_the_registries():
    assert set(names.LOSS_NAMES) == set(LOSSES)
    assert names.LOSS_ALIASES == _ALIASES
    assert {name: spec.input_kind for name, spec in MODELS.items()} == names.MODEL_INPUT_KINDS


def test_validating_a_config_imports_no_torch():
    code = (
        "import sys\nfrom matcard.config import load_config\nfrom matcard.errors import ConfigError\n"
        "try:\n    load_config(overrides={'loss': 'nope'})\nexcept ConfigError as e:\n    print(e)\n"
        "load_config(overrides={'loss': 'Cross-Entropy', 'model': 'MLP'})\n"
        "print('torch' in sys.modules)\n"
    )
    command = [sys.executable, "-c", code]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    message, torch_imported = out.stdout.strip().splitlines()
    assert "loss.name" in message and "'nope'" in message and "magnitude" in message
    assert torch_imported == "False"
