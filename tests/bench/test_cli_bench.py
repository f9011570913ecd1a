"""``tta-cli bench`` end to end on the tiny bundle, and the speed measurement on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tta_cli.bench.speed import NOT_MEASURED, measure_speed
from tta_cli.bench.streams import build_streams
from tta_cli.models import load_bundle
from tta_cli.streams import Framing


def tta(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, with one thread as in ``conftest.py``."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tta_cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)


def test_bench_writes_json_markdown_and_png(bundle_path: Path, clean_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = tta(
        "bench",
        "--model", bundle_path,
        "--data", clean_folder,
        "--out", out,
        "--corruptions", "gaussian_noise,contrast",
        "--severity", "5",
        "--num-examples", "8",
        "--batch-size", "4",
        "--source-data", clean_folder,
        "--fisher-examples", "6",
        "--cache-dir", tmp_path / "cache",
        "--device", "cpu",
        "--no-speed",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "bench.json").read_text())
    cells = report["results"]
    assert len(cells) == 5 * 2 * 2  # methods × protocols × corruptions
    assert {cell["method"] for cell in cells} == {"source", "norm", "tent", "eata", "sar"}
    assert all(cell["images"] == 8 and 0 <= cell["error_percent"] <= 100 for cell in cells)
    assert all(cell["images_per_second"] > 0 and cell["step_ms"] > 0 for cell in cells)
    assert all(cell["peak_gpu_memory_mb"] is None for cell in cells)
    assert report["fisher"].startswith("measured on 6 clean images")
    assert set(report["mean_error_percent"]) == {"reset", "continual"}
    assert report["speed"] == {"gpu": "not measured (--no-speed)"}
    markdown = (out / "bench.md").read_text()
    assert "| method | gauss | contr | mean |" in markdown and "protocol `continual`" in markdown
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "online error (%), reset" in result.stdout


def test_bench_without_source_data_runs_eata_as_eta(bundle_path: Path, clean_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--corruptions", "fog", "--num-examples", "4", "--methods", "eata", "--protocols", "reset"]
    result = tta(
        "bench", "--model", bundle_path, "--data", clean_folder, "--out", out, *args,
        "--cache-dir", tmp_path / "cache", "--no-speed",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "bench.json").read_text())
    assert "as ETA" in report["fisher"] and "eata (as ETA)" in (out / "bench.md").read_text()


def test_unknown_names_are_one_sentence_usage_errors(bundle_path: Path, clean_folder: Path, tmp_path: Path) -> None:
    common = ["bench", "--model", bundle_path, "--data", clean_folder, "--out", tmp_path / "out"]
    for option, value, message in [
        ("--methods", "tent,cotta", "Unknown method 'cotta'"),
        ("--corruptions", "fogg", "Unknown corruption 'fogg'"),
        ("--protocols", "episodic", "Unknown protocol 'episodic'"),
        ("--order", "random", "Unknown order 'random'"),
        ("--order", "dirichlet:0", "Order 'dirichlet:0' needs a finite concentration ALPHA above 0"),
    ]:
        result = tta(*common, option, value)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr


def test_speed_on_the_cpu_is_labeled_and_gpu_is_not_measured(bundle_path: Path, clean_folder: Path, tmp_path) -> None:
    import torch

    bundle = load_bundle(bundle_path)
    [stream] = build_streams(clean_folder, bundle.spec.class_names, ("contrast",), 5, Framing((32, 32)), 6, 0, tmp_path)
    speed = measure_speed(bundle, ["norm", "tent"], stream, torch.device("cpu"), (4,), 1, end_to_end_limit=4)
    assert speed["gpu"] == NOT_MEASURED
    cpu = speed["cpu"]
    assert cpu["device"].startswith("cpu")
    assert [(row["method"], row["batch_size"]) for row in cpu["step_against_floor"]] == [("norm", 4), ("tent", 4)]
    assert all(row["step_ms"] > 0 and row["forward_backward_ms"] > 0 for row in cpu["step_against_floor"])
    assert [row["images"] for row in cpu["end_to_end"]] == [4, 4]
    assert all(row["end_to_end_over_step_only"] > 0 for row in cpu["end_to_end"])
