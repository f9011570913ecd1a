from __future__ import annotations

import subprocess
import sys


def test_the_engine_uses_the_rule_without_loading_the_trainer() -> None:
    """The trainer imports the engine; the engine must not import the trainer back."""
    check = "import sys, tta_cli.engine, tta_cli.mgg; print('tta_cli.mgg.train' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"
