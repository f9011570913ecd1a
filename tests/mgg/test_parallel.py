"""Two processes under torchrun (gloo, CPU) compute the gradients and pre-train the generator
that one process does on the same global batches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_image_folder
from tests.mgg.parallel_gradients import SIZES, losses_and_gradients
from tta_cli.errors import UsageError
from tta_cli.mgg import read_metadata
from tta_cli.mgg import train as mgg_train
from tta_cli.parallel import Parallel

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# Four steps an epoch in two unrolled windows; held-out batches of 4, 4 and 1 images, so that the
# processes' shares are equal, then one of them empty.
SETTINGS = ["--num-images", "16", "--batch-size", "4", "--unroll", "2", "--epochs", "2"]
SETTINGS += ["--eval-images", "9", "--eval-batch-size", "4", "--seed", "1", "--device", "cpu"]
SETTINGS += ["--meta-objective", "cross-entropy+clean"]  # the clean images shared too; anchored: the pull too
CURVES = ("held_out_accuracy", "held_out_objective", "held_out_cross_entropy")
BASELINES = ("source_accuracy", "norm_accuracy", "tent_accuracy")


def test_two_processes_compute_the_gradients_of_the_whole_batch(
    bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    """In float64, to far below float32's rounding: a misplaced factor of the number of
    processes would be a factor of 2 here, while Adam-style normalisation hides it downstream."""
    worker = Path(__file__).with_name("parallel_gradients.py")
    done = subprocess.run(
        [*TORCHRUN, str(worker), str(bundle_path), str(clean_folder), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    expected = losses_and_gradients(bundle_path, clean_folder, Parallel(0, 1, torch.device("cpu")))
    first, second = (load_file(str(tmp_path / f"rank{rank}.safetensors")) for rank in (0, 1))
    for name in (f"{kind}-{size}" for kind in ("losses", "gradients") for size in SIZES):
        assert torch.equal(first[name], second[name]), name  # every process holds the same values
        torch.testing.assert_close(first[name], expected[name], rtol=1e-10, atol=1e-13, msg=name)


def train_mgg_command(launcher: list[str], bundle: Path, data: Path, out: Path) -> subprocess.CompletedProcess[str]:
    options = ["--model", str(bundle), "--data", str(data), "--out", str(out), *SETTINGS]
    return subprocess.run(
        [sys.executable, *launcher, "-m", "tta_cli", "train-mgg", *options],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )


def test_two_processes_equal_one_with_the_same_global_batch(bundle_path: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", per_class=10, seed=1)
    one = train_mgg_command([], bundle_path, data, tmp_path / "one.safetensors")
    assert one.returncode == 0, one.stderr
    two = train_mgg_command(TORCHRUN[1:], bundle_path, data, tmp_path / "two.safetensors")
    assert two.returncode == 0, two.stdout + two.stderr
    assert (two.stdout + two.stderr).count("Wrote ") == 1  # the first process's report only
    records = [read_metadata(tmp_path / f"{name}.safetensors") for name in ("one", "two")]
    assert [record["world_size"] for record in records] == [1, 2]
    assert records[0]["best_epoch"] == records[1]["best_epoch"]
    for name in CURVES + BASELINES:
        torch.testing.assert_close(records[1][name], records[0][name], rtol=1e-4, atol=1e-6, msg=name)
    expected, actual = (load_file(str(tmp_path / f"{name}.safetensors")) for name in ("one", "two"))
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize(
    ("settings", "words"), [({"batch_size": 3}, "--batch-size 3"), ({"eval_batch_size": 5}, "--eval-batch-size 5")]
)
def test_a_batch_the_processes_cannot_share_equally_is_refused(
    bundle_path: Path, clean_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: dict, words: str
) -> None:
    two_processes = Parallel(0, 2, torch.device("cpu"))
    monkeypatch.setattr(mgg_train, "start_parallel", lambda device: two_processes)
    settings = {"num_images": 8, "eval_images": 6, "epochs": 1, "batch_size": 2, "eval_batch_size": 2} | settings
    with pytest.raises(UsageError, match=f"{words} must be a multiple of the 2 processes"):
        mgg_train.train_mgg(bundle_path, clean_folder, out=tmp_path / "x.safetensors", **settings)
    assert not (tmp_path / "x.safetensors").exists()
