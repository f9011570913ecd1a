"""Whether the default for a model without BatchNorm whose bundle has no generator (``sar``,
guarded) should return θ to the source as the learned update does (docs/benchmarks.md, "What
the suite says"): the suite's ``auto`` on a copy of the bundle without its generator, once as
shipped and once with ``NO_BATCH_NORM_METHOD`` set to ``sar+return``, each with the source into
its own folder of OUT, whose tables ``python scripts/suite.py tables OUT/sar`` (and
``OUT/sar+return``) writes.

    python docs/bench/suite/fallback_return.py sample_models/cifar10-airnet_gn-ce CIFAR10_DIR/test OUT
"""

from __future__ import annotations

import runpy
import shutil
import sys
import tempfile
from pathlib import Path

import tta_cli.engine.build as build
from tta_cli.engine.methods import NO_BATCH_NORM_LEARNED_METHOD, get_method

SUITE = Path(__file__).resolve().parents[3] / "scripts" / "suite.py"


def suite(bundle: Path, data: Path, out: Path) -> None:
    sys.argv = ["suite.py", "run", "--bundle", str(bundle), "--data", str(data), "--out", str(out)]
    sys.argv += ["--methods", "source,auto", "--no-ablation"]
    try:
        runpy.run_path(str(SUITE), run_name="__main__")
    except SystemExit as done:
        if done.code:
            raise


def main(bundle: Path, data: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        # The bundle's name (model.toml) stays, so that its source rows compare.
        copy = Path(scratch) / bundle.name
        shutil.copytree(bundle, copy)
        (copy / get_method(NO_BATCH_NORM_LEARNED_METHOD).update_options["generator"]).unlink()
        suite(copy, data, out / build.NO_BATCH_NORM_METHOD)
        build.NO_BATCH_NORM_METHOD = f"{build.NO_BATCH_NORM_METHOD}+return"
        suite(copy, data, out / build.NO_BATCH_NORM_METHOD)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
