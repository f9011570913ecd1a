"""Build ``sample_models/data``: shifted CIFAR-10 test images in class sub-folders.

    python scripts/make_sample_data.py --test .cache/cifar10/test --out sample_models/data

For each class, the first ``per_class`` test images are split evenly over four CIFAR-10-C
corruptions at severity 5, one of each family (noise, blur, weather, digital), and saved
losslessly as ``<class>/<corruption>-<NNNN>.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tta_cli.corruptions import corrupt, image_rng
from tta_cli.corruptions.folder import class_images, save_png
from tta_cli.streams.decode import open_upright

SHIFTS = ("gaussian_noise", "defocus_blur", "fog", "contrast")


def build(test: Path, out: Path, per_class: int = 100, severity: int = 5, seed: int = 0) -> int:
    written = 0
    for class_folder in sorted(path for path in test.iterdir() if path.is_dir()):
        for index, source in enumerate(class_images(class_folder)[:per_class]):
            shift = SHIFTS[index % len(SHIFTS)]
            pixels = np.asarray(open_upright(source).convert("RGB"))
            relative = source.relative_to(test)
            shifted = corrupt(pixels, shift, severity, image_rng(seed, shift, severity, relative))
            target = out / class_folder.name / f"{shift}-{source.stem}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            save_png(shifted, target)
            written += 1
    return written
