"""Exit codes: one table, which the engine, export and the README agree with."""

from __future__ import annotations

import signal
from pathlib import Path

from tta_cli.engine.stopping import EXIT_CODES
from tta_cli.errors import ExitCode, TTAError, UsageError

ROOT = Path(__file__).resolve().parent.parent


def test_a_stop_by_signal_exits_with_128_plus_its_number() -> None:
    for name, code in EXIT_CODES.items():
        assert code is ExitCode[name] and code == 128 + signal.Signals[name]


def test_usage_errors_exit_with_2_and_a_failed_export_check_with_1() -> None:
    from tta_cli.export.run_export import VerificationFailed

    assert TTAError.exit_code == UsageError.exit_code == ExitCode.USAGE == 2
    assert VerificationFailed.exit_code == ExitCode.CHECK_FAILED == 1


def test_the_readme_lists_the_exit_codes_of_adapt() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    codes = ExitCode
    assert (
        f"Exit codes of `adapt`: {int(codes.DONE)} done, {int(codes.USAGE)} bad usage, {int(codes.SOURCE_LOST)} live "
        f"source lost, {int(codes.SOURCE_NOT_FINITE)} the model as given predicts non-finite values, "
        f"{int(codes.SIGINT)} stopped by SIGINT, {int(codes.SIGTERM)} stopped by SIGTERM." in readme
    )
