"""The maintainers' scripts under scripts/: each parses its options and calls the library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_image_folder

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPTS = sorted(path.name for path in (ROOT / "scripts").glob("*.py"))


def script(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """A script as a maintainer runs it from a checkout, with one thread as in ``conftest.py``."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "scripts" / name), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_shows_its_options(name: str) -> None:
    result = script(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "--help" in result.stdout


def test_make_sample_data_writes_shifted_images_per_class(tmp_path: Path) -> None:
    clean = write_image_folder(tmp_path / "test", per_class=2)
    result = script("make_sample_data.py", "--test", clean, "--out", tmp_path / "out", "--per-class", "2")
    assert result.returncode == 0, result.stderr
    assert "wrote 6 images" in result.stdout
    assert sorted(path.name for path in (tmp_path / "out" / "cat").iterdir()) == [
        "defocus_blur-001.png",
        "gaussian_noise-000.png",
    ]


def test_bench_history_store_writes_its_report(bundle_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "history_store.json"
    result = script("bench_history_store.py", "--model", bundle_path, "--steps", "60", "--repeats", "2", "--out", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["steps"] == 60 and report["repeats"] == 2 and report["snapshots_kept"] > 0


def write_bench(
    folder: Path, errors: dict[str, float], seed: int, images: int = 500, cosines: dict[str, list[float]] | None = None
) -> None:
    folder.mkdir(parents=True)
    config = {"batch_size": 64, "severity": 5, "order": "shuffled", "seed": seed, "corruptions": ["fog"]}
    bench = {"images_per_corruption": images, "config": config, "methods": {method: {} for method in errors}}
    results = [{"method": m, "protocol": "reset", "cosines": values} for m, values in (cosines or {}).items()]
    bench |= {"mean_error_percent": {"reset": errors}, "results": results}
    (folder / "bench.json").write_text(json.dumps(bench))


def test_seed_table_gives_means_ranges_and_ratios(tmp_path: Path) -> None:
    errors = {0: {"source": 44.0, "tent": 43.0, "eata": 42.0, "sar": 44.0, "mgtta": 38.0, "mgtta-nomem": 40.5}}
    errors[1] = {**errors[0], "eata": 43.0, "mgtta": 39.0, "mgtta-nomem": 41.5}
    errors[2] = {**errors[0], "eata": 41.0, "mgtta": 37.0, "mgtta-nomem": 39.5}
    write_bench(tmp_path / "seed0" / "bundle", errors[0], seed=0)
    for seed in (1, 2):  # one run per method, as a resumed script leaves them
        for method, error in errors[seed].items():
            write_bench(tmp_path / f"seed{seed}" / "bundle" / method, {method: error}, seed=seed)
    result = script("seed_table.py", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| reset | 44.00 ± 0.00 | 43.00 ± 0.00 | 42.00 ± 2.00 | 44.00 ± 0.00 | 38.00 ± 2.00 |" in result.stdout
    # eata is the best hand-made method; 38/42 of the means, per seed 37/41 … 39/43; gap 4 > range 2.
    expected = "| mgtta 38.00 ± 2.00 | eata 42.00 ± 2.00 | 0.905 | 0.902-0.907 | -4.00 / -4.00 / -4.00 | yes | yes |"
    assert expected in result.stdout
    # 1.5 points below on every seed: not beyond the ranges (2), beyond the paired spread (0).
    assert "| -1.50 / -1.50 / -1.50 | no | yes |" in result.stdout


def test_seed_table_counts_the_steps_whose_gradients_conflict(tmp_path: Path) -> None:
    errors = {"tent": 43.0, "mgtta": 38.0}
    write_bench(tmp_path / "seed0" / "bundle", errors, 0, cosines={"mgtta": [0.5, -0.1, 0.2, -0.3]})
    write_bench(tmp_path / "seed1" / "bundle", errors, 1, cosines={"mgtta": [-0.5, 0.1]})
    result = script("seed_table.py", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| reset | mgtta | 6 | 50% | 50% / 50% | -0.30 |" in result.stdout, "3 of 6 steps (2 of 4, 1 of 2); median"
    assert "| reset | tent |" not in result.stdout, "one objective: nothing to conflict"


def test_seed_table_refuses_runs_of_other_streams(tmp_path: Path) -> None:
    write_bench(tmp_path / "seed0" / "bundle" / "tent", {"tent": 43.0}, seed=0)
    write_bench(tmp_path / "seed0" / "bundle" / "mgtta", {"mgtta": 38.0}, seed=0, images=2000)
    result = script("seed_table.py", tmp_path)
    assert result.returncode != 0
    assert "measured other streams" in result.stderr


def test_seed_table_leaves_out_a_method_some_seed_lacks(tmp_path: Path) -> None:
    write_bench(tmp_path / "seed0" / "bundle", {"source": 44.0, "tent": 43.0, "mgtta": 38.0}, seed=0)
    write_bench(tmp_path / "seed1" / "bundle", {"source": 45.0, "tent": 44.0}, seed=1)
    result = script("seed_table.py", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "left out: mgtta." in result.stdout
    assert "| reset | 44.50 ± 1.00 | 43.50 ± 1.00 |" in result.stdout


def test_seed_table_takes_a_methods_own_run_over_the_bundles(tmp_path: Path) -> None:
    write_bench(tmp_path / "seed0" / "bundle", {"source": 44.0, "mgtta": 40.0}, seed=0)
    write_bench(tmp_path / "seed0" / "bundle" / "mgtta", {"mgtta": 38.0}, seed=0)
    result = script("seed_table.py", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| reset | 44.00 ± 0.00 | 38.00 ± 0.00 |" in result.stdout


def suite_cell(method: str, corruption: str, wrong: list[int], images: int = 40) -> dict[str, object]:
    correct = [index not in wrong for index in range(images)]
    packed = bytes(
        sum(bit << (7 - index % 8) for index, bit in enumerate(correct[at : at + 8])) for at in range(0, images, 8)
    )
    key = {"bundle": "tiny", "order": "shuffled-b64", "shift": "severity5", "method": method}
    return key | {"corruption": corruption, "images": images, "errors": len(wrong), "correct": packed.hex()}


def test_suite_tables_tell_cells_worse_beyond_chance_alone_and_as_a_family(tmp_path: Path) -> None:
    # fog: the default loses 10 images the source has right and wins none (p = 2^-10);
    # frost: it loses 5 (p = 2^-5, below 0.05 alone, not below 0.05 / 2 for Holm's second);
    # snow: it loses 6 and wins 5 (one image worse, no evidence).
    cells = [suite_cell(method, "fog", []) for method in ("source", "norm", "tent", "sar")]
    cells += [suite_cell("auto", "fog", list(range(10)))]
    cells += [suite_cell(method, "frost", []) for method in ("source", "norm", "tent", "sar")]
    cells += [suite_cell("auto", "frost", list(range(5)))]
    cells += [suite_cell(method, "snow", list(range(5))) for method in ("source", "norm", "tent", "sar")]
    cells += [suite_cell("auto", "snow", list(range(5, 11)))]
    (tmp_path / "cells.jsonl").write_text("".join(json.dumps(cell) + "\n" for cell in cells))
    result = script("suite.py", "tables", tmp_path)
    assert result.returncode == 0, result.stderr
    worse = next(line for line in result.stdout.splitlines() if line.startswith("| tiny | 3 |"))
    assert worse.startswith("| tiny | 3 | 3 | 3 | 2 | 1 |")
    assert "fog 0.0 → 25.0 (0.00098)" in worse and "frost 0.0 → 12.5 (0.031)" in worse
    assert "snow 12.5 → 15.0 (0.5)" in worse


def test_suite_run_records_each_image_and_replaces_rows_without(bundle_path: Path, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "test", per_class=2)
    out = tmp_path / "suite"
    out.mkdir()
    stale = {"bundle": "tiny", "order": "shuffled-b64", "shift": "severity1", "method": "source"}
    (out / "cells.jsonl").write_text(json.dumps(stale | {"corruption": "fog", "images": 6, "errors": 6}) + "\n")
    options = ["--orders", "shuffled-b64", "--shifts", "severity1", "--methods", "source,auto", "--no-ablation"]
    result = script("suite.py", "run", "--bundle", bundle_path, "--data", data, "--out", out, *options)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines()]
    assert sorted({row["method"] for row in rows}) == ["auto", "source"]
    assert len(rows) == 2 * 15 and all(row["images"] == 6 and len(row["correct"]) == 2 for row in rows)
    # The row without a per-image record was run again, not kept beside the new one.
    assert sum(row["method"] == "source" and row["corruption"] == "fog" for row in rows) == 1
    tables = script("suite.py", "tables", out)
    assert tables.returncode == 0, tables.stderr
    assert "| tiny | shuffled-b64 | severity1 | " in tables.stdout and " | – | – | – | " in tables.stdout
