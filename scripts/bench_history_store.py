"""Storage and rollback cost of the history store with a real bundle's adaptation state.

    python scripts/bench_history_store.py --model sample_models/cifar10-airnet-ce --out docs/history_store.json

What is measured, and how: the docstring of ``tta_cli.bench.history_store``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tta_cli.bench.history_store import measure


def main(
    model: Annotated[Path, typer.Option(help="Model bundle.")],
    steps: Annotated[int, typer.Option(help="Steps to record.")] = 10_000,
    repeats: Annotated[int, typer.Option(help="Timed rollbacks and restores (median).")] = 50,
    out: Annotated[Path | None, typer.Option(help="JSON file to write.")] = None,
) -> None:
    """Measure the history store's storage and rollback cost."""
    text = json.dumps(measure(model, steps, repeats), indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


if __name__ == "__main__":
    typer.run(main)
