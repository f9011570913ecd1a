"""The pre-training curves of Meta Gradient Generators, from the metadata in their files: held-out
online accuracy, cross-entropy and test-time objective after every epoch, against the source,
norm and Tent on the same images.

    python scripts/mgg_curves.py FILE.safetensors ... > curves.md
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tta_cli.mgg import read_metadata


def main(files: Annotated[list[Path], typer.Argument(help="mgg.safetensors files.")]) -> None:
    for path in files:
        meta = read_metadata(path)
        print(f"### {path.name}: {meta['bundle']}\n")
        print(
            f"meta-objective {meta.get('meta_objective', 'test-time')}, α {meta['step_size']:g} "
            f"(training {meta['train_step_size']:g}), batch {meta['batch_size']}, unroll {meta.get('unroll', 1)}, "
            f"{meta['num_images']} training images, {meta.get('passes', 1)} pass(es) per episode, "
            f"{meta['eval_images']} evaluation images per shift, generator lr {meta['lr']:g}, memory {meta['memory']}, "
            f"pull towards the source {meta.get('pull', 0.0):.3g}"
            f"{f', step scale {scale:.3g} (learned)' if (scale := meta.get('scale')) and meta.get('scaled') else ''}, "
            f"{meta['seconds'] / 60:.1f} min.\n"
        )
        tent = meta.get("tent_accuracy")
        print(
            f"Held-out online accuracy: source {meta['source_accuracy']:.2%}, norm {meta['norm_accuracy']:.2%}, "
            f"tent {'not measured' if tent is None else f'{tent:.2%}'}; best epoch {meta['best_epoch']}.\n"
        )
        print("| epoch | accuracy | cross-entropy | test-time objective |\n|---|---|---|---|")
        cross_entropy = meta.get("held_out_cross_entropy") or [None] * len(meta["held_out_accuracy"])
        for epoch, (accuracy, loss, objective) in enumerate(
            zip(meta["held_out_accuracy"], cross_entropy, meta["held_out_objective"], strict=True), start=1
        ):
            shown = "-" if loss is None else f"{loss:.4f}"
            print(f"| {epoch} | {accuracy:.2%} | {shown} | {objective:.4f} |")
        print()


if __name__ == "__main__":
    typer.run(main)
