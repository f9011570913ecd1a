"""``run_bench`` in-process: stream orders, rounds, batches of one and the counts against ``source``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tta_cli.bench import BenchConfig, run_bench
from tta_cli.bench import run as bench_run
from tta_cli.bench.protocols import CellResult
from tta_cli.bench.run import check_batch_of_one, worse_than_source
from tta_cli.bench.streams import build_streams
from tta_cli.errors import UsageError
from tta_cli.models import load_bundle
from tta_cli.streams import Framing


def bench(bundle_path: Path, clean_folder: Path, tmp_path: Path, **settings: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "corruptions": ("gaussian_noise", "contrast"),
        "num_examples": 6,
        "batch_size": 3,
        "methods": ("source", "tent"),
        "cache_dir": tmp_path / "cache",
        "device": "cpu",
        "speed": False,
        **settings,
    }
    return run_bench(BenchConfig(model=bundle_path, data=clean_folder, out=tmp_path / "out", **options))


def test_rounds_give_per_round_rows_and_the_error_of_each_round(
    bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    result = bench(bundle_path, clean_folder, tmp_path, rounds=3)
    rows = result["results"]
    assert len(rows) == 2 * 2 * 3 * 2  # methods × protocols × rounds × corruptions
    for protocol in ("reset", "continual"):
        for method in ("source", "tent"):
            cells = [row for row in rows if (row["protocol"], row["method"]) == (protocol, method)]
            assert sorted((row["round"], row["corruption"]) for row in cells) == [
                (number, name) for number in (1, 2, 3) for name in ("contrast", "gaussian_noise")
            ]
            per_round = [
                pytest.approx(sum(row["error_percent"] for row in cells if row["round"] == number) / 2, abs=0.01)
                for number in (1, 2, 3)
            ]
            assert result["error_per_round"][protocol][method] == per_round
            mean = sum(row["error_percent"] for row in cells) / len(cells)
            assert result["mean_error_percent"][protocol][method] == pytest.approx(mean, abs=0.01)
    # Only tent under continual runs three rounds; every other run is its first round again.
    continual_tent = [row for row in rows if (row["method"], row["protocol"]) == ("tent", "continual")]
    assert not any(row["copied_from"] for row in continual_tent)
    assert all(
        row["copied_from"] is not None
        for row in rows
        if row["round"] > 1 and (row["method"], row["protocol"]) != ("tent", "continual")
    )
    out = tmp_path / "out"
    assert json.loads((out / "bench.json").read_text())["error_per_round"] == result["error_per_round"]
    markdown = (out / "bench.md").read_text()
    assert "## Error per round (%)" in markdown and "| method | protocol | round 1 | round 2 | round 3 |" in markdown
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_round_has_no_round_table(bundle_path: Path, clean_folder: Path, tmp_path: Path) -> None:
    result = bench(bundle_path, clean_folder, tmp_path, methods=("tent",), protocols=("continual",))
    assert {row["round"] for row in result["results"]} == {1}
    assert result["error_per_round"] == {"continual": {"tent": [result["mean_error_percent"]["continual"]["tent"]]}}
    assert result["worse_than_source"] is None
    markdown = (tmp_path / "out" / "bench.md").read_text()
    assert "Error per round" not in markdown and "worse than source" not in markdown


def cell(method: str, corruption: str, errors: int, number: int = 1, protocol: str = "continual") -> CellResult:
    return CellResult(method, protocol, corruption, number, images=10, errors=errors)


def test_worse_than_source_counts_cells_with_more_errors_on_the_same_corruption_and_round() -> None:
    cells = [
        cell("source", "fog", 5),
        cell("source", "snow", 3),
        cell("source", "fog", 5, number=2),
        cell("source", "snow", 3, number=2),
        cell("tent", "fog", 6),  # worse
        cell("tent", "snow", 3),  # as bad: not worse
        cell("tent", "fog", 4, number=2),
        cell("tent", "snow", 4, number=2),  # worse
        cell("norm", "fog", 1),
        cell("norm", "snow", 1),
        cell("norm", "fog", 1, number=2),
        cell("norm", "snow", 1, number=2),
    ]
    counts = worse_than_source(cells, ("source", "tent", "norm"), ("continual",))
    assert counts == {"continual": {"source": 0, "tent": 2, "norm": 0}}
    assert worse_than_source(cells, ("tent", "norm"), ("continual",)) is None


def test_the_report_shows_the_count_against_source(bundle_path: Path, clean_folder: Path, tmp_path: Path) -> None:
    result = bench(bundle_path, clean_folder, tmp_path, methods=("source", "norm"), protocols=("reset",))
    source = {row["corruption"]: row["error_percent"] for row in result["results"] if row["method"] == "source"}
    expected = sum(
        row["error_percent"] > source[row["corruption"]] for row in result["results"] if row["method"] == "norm"
    )
    assert result["worse_than_source"] == {"reset": {"source": 0, "norm": expected}}
    markdown = (tmp_path / "out" / "bench.md").read_text()
    assert "| method | gauss | contr | mean | worse than source |" in markdown
    norm_row = next(line for line in markdown.splitlines() if line.startswith("| norm |"))  # above the speed table
    assert norm_row.endswith(f"| {expected} |")


def test_batch_size_one_runs_every_baseline_end_to_end(bundle_path: Path, clean_folder: Path, tmp_path: Path) -> None:
    methods = ("source", "norm", "tent", "eata", "sar")
    result = bench(bundle_path, clean_folder, tmp_path, batch_size=1, num_examples=4, methods=methods, rounds=2)
    assert len(result["results"]) == len(methods) * 2 * 2 * 2
    assert all(row["images"] == 4 and 0 <= row["error_percent"] <= 100 for row in result["results"])


def test_a_batch_of_one_is_refused_where_batchnorm_sees_one_value_per_channel(
    bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    bundle = load_bundle(bundle_path)
    [stream] = build_streams(clean_folder, ("cat", "dog", "ship"), ("fog",), 5, Framing((32, 32)), 2, 0, tmp_path)
    before = {name: value.clone() for name, value in bundle.model.state_dict().items()}
    check_batch_of_one(bundle, stream, torch.device("cpu"))  # tiny_resnet keeps 8×8 maps
    assert all(torch.equal(value, before[name]) for name, value in bundle.model.state_dict().items())
    bundle.model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4), nn.Flatten())
    with pytest.raises(UsageError, match=r"one value per channel.*--batch-size of 2 or more"):
        check_batch_of_one(bundle, stream, torch.device("cpu"))


def test_the_mixed_streams_last_batch_is_checked_for_a_batch_of_one(
    bundle_path: Path, clean_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two corruptions of 3 images at batch 5: each stream's last batch holds 3, the mixed
    stream's (6 images) holds 1."""
    checked: list[int] = []
    monkeypatch.setattr(bench_run, "check_batch_of_one", lambda bundle, stream, device: checked.append(len(stream)))
    settings = {"num_examples": 3, "batch_size": 5, "methods": ("norm",)}
    bench(bundle_path, clean_folder, tmp_path, protocols=("reset",), **settings)
    assert checked == []
    bench(bundle_path, clean_folder, tmp_path, protocols=("reset", "mixed"), **settings)
    assert checked == [3]


def test_orders_reach_the_streams_and_the_report(bundle_path: Path, clean_folder: Path, tmp_path: Path) -> None:
    result = bench(bundle_path, clean_folder, tmp_path, order="video:3", methods=("norm",), protocols=("reset",))
    assert result["config"]["order"] == "video:3"
    assert all(row["images"] == 18 for row in result["results"])  # every frame counts
    assert "18 frames per corruption (6 images as 3 frames each)" in (tmp_path / "out" / "bench.md").read_text()
    sorted_result = bench(bundle_path, clean_folder, tmp_path / "sorted", order="sorted", methods=("norm",))
    assert "in `sorted` order" in (tmp_path / "sorted" / "out" / "bench.md").read_text()
    assert sorted_result["results"][0]["images"] == 6


def test_bad_orders_and_rounds_are_refused_by_the_config(bundle_path: Path, clean_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="ALPHA above 0"):
        BenchConfig(model=bundle_path, data=clean_folder, out=tmp_path, order="dirichlet:-0.5")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        BenchConfig(model=bundle_path, data=clean_folder, out=tmp_path, rounds=0)


def test_two_objectives_record_the_cosine_of_every_step_they_harmonize(
    bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    methods = ("tent", "harmonized+harmonize1", "harmonized")
    result = bench(bundle_path, clean_folder, tmp_path, methods=methods, protocols=("continual",))
    rows = {row["method"]: row for row in result["results"] if row["corruption"] == "contrast"}
    assert rows["tent"]["cosines"] == []
    assert len(rows["harmonized+harmonize1"]["cosines"]) == 2  # six images, batches of three
    assert len(rows["harmonized"]["cosines"]) == 1  # one step in two
    assert all(-1 <= value <= 1 for value in rows["harmonized+harmonize1"]["cosines"])
    assert (tmp_path / "out" / "bench.png").stat().st_size > 0


def test_the_shifts_beyond_the_benchmark_are_benchmark_streams(
    bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    config = BenchConfig(
        model=bundle_path,
        data=clean_folder,
        out=tmp_path / "out",
        corruptions=("low_light", "inverted"),
        num_examples=6,
        methods=("source", "norm"),
        protocols=("continual",),
        batch_size=3,
        speed=False,
        cache_dir=tmp_path / "cache",
    )
    result = run_bench(config)
    assert {cell["corruption"] for cell in result["results"]} == {"low_light", "inverted"}


def test_mixed_reports_each_corruption_of_one_stream_against_it_alone(
    bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    result = bench(
        bundle_path,
        clean_folder,
        tmp_path,
        methods=("source", "norm", "tent"),
        protocols=("reset", "mixed"),
        domain_weighting=True,
    )
    mixed = [row for row in result["results"] if row["protocol"] == "mixed"]
    assert {(row["method"], row["corruption"]) for row in mixed} == {
        (method, corruption) for method in ("source", "norm", "tent") for corruption in ("gaussian_noise", "contrast")
    }
    assert all(row["images"] == 6 for row in mixed)
    # source does not adapt: its mixed cells repeat its reset ones; norm's batches mix corruptions.
    copied = {row["method"]: row["copied_from"] for row in mixed}
    assert copied == {"source": "protocol reset", "norm": None, "tent": None}
    for row in mixed:
        split = row["against_alone"]
        assert split["samples"] == 6
        if row["method"] == "source":
            assert split["transfer"] == split["interference"] == 0
    markdown = (tmp_path / "out" / "bench.md").read_text()
    assert "## Mixed against alone: interference / transfer (%)" in markdown
    assert "## Online error (%), protocol `mixed`" in markdown


def test_smoothed_statistics_run_under_continual_and_every_round_not_copied_from_reset(
    bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    """A norm that smooths its statistics over the stream carries them into the next corruption
    and round without any gradient step: continual is a run of its own."""
    result = bench(bundle_path, clean_folder, tmp_path, methods=("norm", "norm+weighted"), rounds=2)
    rows = result["results"]
    weighted = [row for row in rows if row["method"] == "norm+weighted" and row["protocol"] == "continual"]
    assert len(weighted) == 2 * 2 and not any(row["copied_from"] for row in weighted)
    plain = [row for row in rows if row["method"] == "norm" and row["protocol"] == "continual"]
    assert all(row["copied_from"] == "protocol reset" for row in plain)
