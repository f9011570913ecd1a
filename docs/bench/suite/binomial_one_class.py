"""Whether ``return_on_one_class`` should ask a significance test instead of a share
(docs/benchmarks.md, "Fewer mechanisms"): the suite's ``source`` and ``auto`` with the one-class
test replaced by a binomial one (the batch's top class under the source's statistics more
frequent than evenly spread classes explain, at ``LEVEL`` over the classes), into OUT, whose
tables ``python scripts/suite.py tables OUT`` writes.

    python docs/bench/suite/binomial_one_class.py CIFAR10_DIR/test OUT BUNDLE...
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import torch
from scipy.stats import binom

from tta_cli.engine.norms.weighted import WeightedNorm

SUITE = Path(__file__).resolve().parents[3] / "scripts" / "suite.py"
LEVEL = 1e-3


def binomial_one_class(self: WeightedNorm, source_logits: torch.Tensor) -> bool:
    if not self.looks_like_source:
        return False
    classes = source_logits.shape[1]
    count = int(torch.bincount(source_logits.argmax(dim=1)).max())
    return classes * float(binom.sf(count - 1, len(source_logits), 1 / classes)) < LEVEL


def main(data: Path, out: Path, bundles: list[str]) -> None:
    WeightedNorm._one_class = binomial_one_class  # type: ignore[method-assign]
    sys.argv = ["suite.py", "run", "--data", str(data), "--out", str(out), "--methods", "source,auto", "--no-ablation"]
    sys.argv += [argument for bundle in bundles for argument in ("--bundle", bundle)]
    try:
        runpy.run_path(str(SUITE), run_name="__main__")
    except SystemExit as done:
        if done.code:
            raise


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
