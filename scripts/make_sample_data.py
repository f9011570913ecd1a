"""Build ``sample_models/data``: shifted CIFAR-10 test images in class sub-folders.

    python scripts/make_sample_data.py --test CIFAR10_DIR/test --out sample_models/data

What it writes is ``tta_cli.training.sample_data.build``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tta_cli.training.sample_data import build


def main(
    test: Annotated[Path, typer.Option(help="Clean test folder with class sub-folders.")],
    out: Annotated[Path, typer.Option(help="Folder to write <class>/<corruption>-<NNNN>.png to.")],
    per_class: Annotated[int, typer.Option(help="Test images per class.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the corruptions.")] = 0,
) -> None:
    """Build the shifted sample images from CIFAR-10's test split."""
    print(f"wrote {build(test, out, per_class, seed=seed)} images to {out}")


if __name__ == "__main__":
    typer.run(main)
