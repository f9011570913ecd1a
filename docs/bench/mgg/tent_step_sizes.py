"""How far the step size moves Tent on the MGG's held-out evaluation stream: online accuracy of
norm and of Tent at several Adam step sizes, from the source for each held-out shift (batch 64).

    python docs/bench/mgg/tent_step_sizes.py sample_models/cifar10-airnet-ce CIFAR10_DIR/train --eval-images 2048
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import typer

from tta_cli.corruptions import HELD_OUT
from tta_cli.mgg.data import build_held_out
from tta_cli.mgg.train import _Trainer
from tta_cli.models import load_bundle


def main(
    bundle_path: Path,
    data: Annotated[Path, typer.Argument(help="Clean training images in class folders.")],
    eval_images: int = 1024,
    step_sizes: str = "1e-3,3e-3,1e-2,3e-2",
) -> None:
    torch.manual_seed(0)
    bundle = load_bundle(bundle_path)
    spec = bundle.spec
    held_out = build_held_out(data, spec.class_names, spec.framing, HELD_OUT, 5, 64, eval_images, 0)
    for text in step_sizes.split(","):
        alpha = float(text)
        trainer = _Trainer(bundle, held_out, torch.device("cpu"), "gh++", 64, 64, alpha, alpha, "cross-entropy", 1)
        print(f"α {alpha:g}: norm {trainer.norm_accuracy():.2%}, tent {trainer.tent_accuracy():.2%}", flush=True)
        trainer.close()


if __name__ == "__main__":
    typer.run(main)
