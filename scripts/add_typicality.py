"""Measure a bundle's typicality (``tta_cli.models.typicality``) and add it to the bundle's
source_stats.safetensors, leaving everything else in the bundle as it was: for a bundle prepared
before ``prepare`` measured it. The images and their order are those ``prepare`` uses.

    python scripts/add_typicality.py BUNDLE CLEAN_FOLDER [--num-images 5000]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from safetensors.torch import load_file, save

from tta_cli.files import write_atomic
from tta_cli.models import load_bundle
from tta_cli.models.bundle import SOURCE_STATS_FILE
from tta_cli.models.prepare import source_batches
from tta_cli.models.typicality import PREFIX, measure_typicality


def main(
    bundle: Annotated[Path, typer.Argument(help="The model bundle.")],
    data: Annotated[Path, typer.Argument(help="Its clean source images, <class>/<image>.")],
    num_images: Annotated[int, typer.Option(help="As prepare's --num-images.")] = 2000,
    batch_size: int = 100,
) -> None:
    loaded = load_bundle(bundle)
    spec = loaded.spec
    clean = source_batches(data, spec.framing, spec.class_names, spec.mean, spec.std, num_images, batch_size)
    typicality = measure_typicality(loaded.model, (batch.images for batch in clean))
    if typicality is None:
        typer.echo(f"{bundle}'s model has no BatchNorm layer over images, or fewer than 200 images came.", err=True)
        raise typer.Exit(2)
    stored = load_file(str(bundle / SOURCE_STATS_FILE))
    stats = {key: value for key, value in stored.items() if not key.startswith(f"{PREFIX}.")} | typicality.tensors()
    write_atomic(bundle / SOURCE_STATS_FILE, save(stats))
    typer.echo(f"{bundle}: typicality over {len(typicality.loc)} layers, limit {typicality.limit:.3f}")


if __name__ == "__main__":
    typer.run(main)
