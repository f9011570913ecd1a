"""Two processes under torchrun (gloo, CPU) take the step one process takes on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def distill_command(launcher: list[str], run: Path, source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    options = ["--student", "tiny_resnet", "--source-data", str(source), "--out", str(out)]
    options += ["--epochs", "1", "--batch-size", "12", "--device", "cpu"]
    return subprocess.run(
        [sys.executable, *launcher, "-m", "tta_cli", "distill", str(run), *options],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )


def test_two_processes_equal_one_with_the_same_global_batch(
    teacher_run: Path, clean_folder: Path, tmp_path: Path
) -> None:
    one = distill_command([], teacher_run, clean_folder, tmp_path / "one")
    assert one.returncode == 0, one.stderr
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = distill_command(torchrun, teacher_run, clean_folder, tmp_path / "two")
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("tta-cli distill →") == 1  # the table comes from the first process only
    records = [json.loads((tmp_path / name / "distill.json").read_text()) for name in ("one", "two")]
    assert [record["world_size"] for record in records] == [1, 2]
    for name in ("loss", "feature_discriminator", "domain", "kd", "target_accuracy"):
        torch.testing.assert_close(records[0]["curves"][name], records[1]["curves"][name], rtol=1e-5, atol=1e-6)
    expected, actual = (load_file(str(tmp_path / name / "weights.safetensors")) for name in ("one", "two"))
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=1e-4, atol=1e-5, msg=key)
