from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import CLASSES
from tta_cli.bench.protocols import bench_method, run_method
from tta_cli.bench.streams import ShiftedStream
from tta_cli.config import WeightedNormConfig
from tta_cli.engine import get_method
from tta_cli.engine.build import resolve_method
from tta_cli.models import load_bundle
from tta_cli.streams import Framing, Preprocess, list_images
from tta_cli.streams.decode import decode_image

# Tent with a large step, so that adapting visibly moves θ within a few batches.
FAST_TENT = replace(get_method("tent"), lr=0.05)


def clean_stream(folder: Path, name: str, size: int | None = None) -> ShiftedStream:
    files = list_images(folder)[:size]
    images = np.stack([decode_image(path, Framing((32, 32))) for path in files])
    labels = np.array([CLASSES.index(path.parent.name) for path in files])
    return ShiftedStream(name, 5, folder, [path.name for path in files], images, labels)


def theta(adapter) -> torch.Tensor:
    return torch.cat([param.detach().flatten().clone() for param in adapter.params])


@pytest.mark.parametrize("protocol", ["reset", "continual"])
def test_reset_starts_every_corruption_from_the_source_and_continual_does_not(
    bundle_path: Path, clean_folder: Path, protocol: str
) -> None:
    bundle = load_bundle(bundle_path)
    before = {name: value.clone() for name, value in bundle.model.state_dict().items()}
    streams = [clean_stream(clean_folder, name) for name in ("first", "second", "third")]
    starts: list[torch.Tensor] = []
    run_method(
        bundle,
        FAST_TENT,
        streams,
        protocol,
        batch_size=6,
        device=torch.device("cpu"),
        on_corruption_start=lambda name, adapter: starts.append(theta(adapter)),
    )
    source = starts[0]
    moved = [not torch.equal(start, source) for start in starts[1:]]
    assert moved == ([False, False] if protocol == "reset" else [True, True])
    for name, value in bundle.model.state_dict().items():  # the bundle's model is left as it was
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("protocol", ["reset", "continual"])
def test_rounds_replay_the_sequence_carrying_the_state_only_under_continual(
    bundle_path: Path, clean_folder: Path, protocol: str
) -> None:
    bundle = load_bundle(bundle_path)
    streams = [clean_stream(clean_folder, name) for name in ("first", "second")]
    starts: list[torch.Tensor] = []
    cells = run_method(
        bundle,
        FAST_TENT,
        streams,
        protocol,
        batch_size=6,
        device=torch.device("cpu"),
        on_corruption_start=lambda name, adapter: starts.append(theta(adapter)),
        rounds=3,
    )
    assert [(cell.corruption, cell.round) for cell in cells] == [
        (name, number) for number in (1, 2, 3) for name in ("first", "second")
    ]
    assert all(cell.images == len(streams[0]) for cell in cells)
    moved = [not torch.equal(start, starts[0]) for start in starts[1:]]
    assert moved == [protocol == "continual"] * 5


def test_predictions_are_counted_before_each_update(bundle_path: Path, clean_folder: Path) -> None:
    """One batch per stream: Tent's prediction of it is Norm's, whatever the update does after."""
    bundle = load_bundle(bundle_path)
    stream = clean_stream(clean_folder, "clean")
    device = torch.device("cpu")
    [tent] = run_method(bundle, FAST_TENT, [stream], "reset", batch_size=len(stream), device=device)
    [norm] = run_method(bundle, get_method("norm"), [stream], "reset", batch_size=len(stream), device=device)
    assert tent.images == norm.images == len(stream)
    assert tent.errors == norm.errors
    # The same batch twice in a continual stream: the second time it is predicted by the model
    # after exactly one update, computed here by hand (Tent: Adam on BatchNorm's affine θ).
    first, second = run_method(bundle, FAST_TENT, [stream, stream], "continual", len(stream), device)
    assert first.errors == norm.errors
    model = load_bundle(bundle_path).model.train()
    model.requires_grad_(False)
    params = [p for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in (m.weight, m.bias)]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=FAST_TENT.lr)
    images = Preprocess(bundle.spec.mean, bundle.spec.std)(stream.images)
    logits = model(images)
    (-(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()).backward()
    optimizer.step()
    with torch.no_grad():
        expected = int((model(images).argmax(1) != torch.from_numpy(stream.labels)).sum())
    assert second.errors == expected


def test_cells_count_images_steps_and_errors(bundle_path: Path, clean_folder: Path) -> None:
    bundle = load_bundle(bundle_path)
    stream = clean_stream(clean_folder, "clean", size=10)
    [cell] = run_method(bundle, get_method("source"), [stream], "reset", batch_size=4, device=torch.device("cpu"))
    assert (cell.images, cell.steps) == (10, 3)
    assert 0 <= cell.errors <= 10 and cell.error_percent == pytest.approx(100 * cell.errors / 10)
    assert cell.step_ms > 0 and cell.images_per_second > 0 and cell.peak_gpu_memory_mb is None


def test_reset_every_n_steps_returns_to_the_source(bundle_path: Path, clean_folder: Path) -> None:
    bundle = load_bundle(bundle_path)
    stream = clean_stream(clean_folder, "clean")  # 18 images: six steps of three
    (cell,) = run_method(bundle, get_method("tent+reset2"), [stream], "continual", 3, torch.device("cpu"))
    assert cell.notes["reset"] == 2  # before steps 3 and 5


def test_memory_feeds_the_update_with_a_balanced_batch(bundle_path: Path, clean_folder: Path) -> None:
    bundle = load_bundle(bundle_path)
    stream = clean_stream(clean_folder, "clean")
    seen: list[int] = []

    def watch(name: str, adapter) -> None:
        original = adapter._losses

        def losses(logits, batch, revisit):
            seen.append(len(logits))
            return original(logits, batch, revisit)

        adapter._losses = losses

    run_method(
        bundle, get_method("tent+memory6"), [stream], "continual", 3, torch.device("cpu"), on_corruption_start=watch
    )
    assert seen[0] <= 3 and max(seen) <= 6 and len(seen) == 6


def test_auto_runs_the_default_of_adapt_guarded(bundle_path: Path) -> None:
    bundle = load_bundle(bundle_path)
    method = bench_method("auto", bundle)
    default = resolve_method("auto")
    assert (method.name, method.guard) == ("auto", True)
    assert (method.norm, method.objectives) == (default.norm, default.objectives)


def test_an_ablated_weighted_norm_reaches_the_adapter(bundle_path: Path, clean_folder: Path) -> None:
    bundle = load_bundle(bundle_path)
    stream = clean_stream(clean_folder, "clean")
    off = WeightedNormConfig(return_on_fit=False, return_on_one_class=False, jump=False)
    seen = []
    run_method(
        bundle,
        get_method("norm+weighted"),
        [stream],
        "continual",
        6,
        torch.device("cpu"),
        on_corruption_start=lambda name, adapter: seen.append(adapter.norm.settings),
        weighted_norm=off,
    )
    assert seen == [off]


def test_mix_interleaves_the_streams_keeping_each_ones_order(clean_folder: Path) -> None:
    from tta_cli.bench.protocols import mix

    first, second = clean_stream(clean_folder, "first", 9), clean_stream(clean_folder, "second", 6)
    mixed = mix([first, second], seed=0)
    assert len(mixed) == 15 and mixed.domains is not None
    assert mixed.domains.count("first") == 9 and mixed.domains != sorted(mixed.domains)
    for stream in (first, second):
        ids = [
            image_id.removeprefix(f"{stream.corruption}/")
            for image_id in mixed.ids
            if image_id.startswith(stream.corruption)
        ]
        assert ids == stream.ids
    assert mix([first, second], seed=0).ids == mixed.ids


def test_a_mixed_stream_s_cells_count_its_events_once_and_keep_its_time_per_step() -> None:
    """Fifteen corruptions over two steps: each corruption's share of the steps rounds to none."""
    from collections import Counter

    from tta_cli.bench.protocols import CellResult, _per_domain

    domains = [f"corruption{index}" for index in range(15) for _ in range(2)]
    ids = [f"{domain}/{number}" for number, domain in enumerate(domains)]
    images, labels = np.zeros((30, 4, 4, 3), np.uint8), np.zeros(30, np.int64)
    stream = ShiftedStream("mixed", 5, Path("."), ids, images, labels, domains)
    cell = CellResult("tent", "mixed", "mixed", images=30, steps=2, step_seconds=0.5, total_seconds=1.5)
    cell.notes = Counter({"norm-return": 2})
    cell.correct = dict.fromkeys(ids, True)
    cells = _per_domain(cell, stream)
    assert len(cells) == 15 and all(part.step_ms == 250 for part in cells)
    assert sum(sum(part.notes.values()) for part in cells) == 2
    assert sum(part.total_seconds for part in cells) == pytest.approx(1.5)
