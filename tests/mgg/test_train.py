from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import CLASSES, MEAN, STD
from tta_cli.config import GuardConfig
from tta_cli.engine import Adapter, Method
from tta_cli.engine.guard import Guard
from tta_cli.engine.norms import BatchStatistics
from tta_cli.engine.params import norm_affine_parameters
from tta_cli.errors import UsageError
from tta_cli.mgg import MetaGradientGenerator, MGGRule, load_generator, read_metadata, rule_for_bundle
from tta_cli.mgg.train import FunctionalModel, TrainProgress, meta_surrogate, train_mgg
from tta_cli.models import load_bundle
from tta_cli.models.bundle import MGG_NO_MEMORY_FILE
from tta_cli.objectives import Entropy, FeatureAlignment
from tta_cli.parallel import Parallel
from tta_cli.streams import FolderStream, Framing, Preprocess, batches

ONE_PROCESS = Parallel(0, 1, torch.device("cpu"))
TINY = {"num_images": 8, "eval_images": 6, "epochs": 2, "batch_size": 2, "eval_batch_size": 3}


@pytest.fixture(scope="module")
def trained(bundle_path: Path, clean_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two runs with the same seed."""
    folder = tmp_path_factory.mktemp("mgg")
    paths = []
    for run in range(2):
        progress: list[TrainProgress] = []
        report = train_mgg(
            bundle_path, clean_folder, out=folder / f"run{run}.safetensors", seed=3, **TINY, on_progress=progress.append
        )
        assert report.path.is_file() and len(report.held_out_accuracy) == 2
        assert [p.phase for p in progress].count("evaluate") == 2
        assert any(p.meta_loss is not None for p in progress)
        paths.append(report.path)
    return paths


def test_pre_training_is_deterministic_for_a_seed(trained: list[Path]) -> None:
    first, second = (load_file(str(path)) for path in trained)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert read_metadata(trained[0]) | {"seconds": 0} == read_metadata(trained[1]) | {"seconds": 0}


def test_pre_training_moves_the_generator_away_from_its_initialisation(trained: list[Path]) -> None:
    torch.manual_seed(3)
    initial = MetaGradientGenerator().state_dict()
    learned = load_file(str(trained[0]))
    assert any(not torch.equal(initial[name], learned[name]) for name in initial)


def test_the_file_carries_its_training_metadata(trained: list[Path], bundle_path: Path) -> None:
    metadata = read_metadata(trained[0])
    assert metadata["held_out"] == ["speckle_noise", "spatter", "gaussian_blur", "saturate"]
    assert metadata["severity"] == 5 and metadata["num_images"] == 8 and metadata["epochs"] == 2
    assert metadata["seed"] == 3 and metadata["harmonizer"] == "gh++" and metadata["memory"] is True
    assert metadata["best_epoch"] in (1, 2) and len(metadata["held_out_accuracy"]) == 2
    assert metadata["bundle_weights_sha256"] == load_bundle(bundle_path).weights_sha256
    assert metadata["anchored"] is True and metadata["pull"] >= 0
    assert load_generator(trained[0]).parameter_count() == 165  # the paper's 164 and the pull


def test_default_output_is_the_bundle_and_the_ablation_trains(
    bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    bundle_copy = tmp_path / "bundle"
    bundle_copy.mkdir()
    for file in bundle_path.iterdir():
        (bundle_copy / file.name).write_bytes(file.read_bytes())
    settings = TINY | {"epochs": 1, "step_size": 3e-3, "meta_objective": "test-time", "unroll": 2}
    report = train_mgg(bundle_copy, clean_folder, memory=False, harmonizer="sum", **settings)
    assert report.path == bundle_copy / "mgg-no-memory.safetensors" and report.path.is_file()
    assert not (bundle_copy / "mgg.safetensors").exists()
    with pytest.raises(UsageError, match="--overwrite"):
        train_mgg(bundle_copy, clean_folder, memory=False, harmonizer="sum", **settings)
    assert read_metadata(report.path)["seed"] == 0
    train_mgg(bundle_copy, clean_folder, memory=False, harmonizer="sum", overwrite=True, **settings | {"seed": 1})
    assert read_metadata(report.path)["seed"] == 1
    metadata = read_metadata(report.path)
    assert metadata["meta_objective"] == "test-time" and metadata["unroll"] == 2
    assert metadata["train_step_size"] == metadata["step_size"] == 3e-3
    loaded = load_bundle(bundle_copy)
    theta = list(loaded.model.parameters())
    rule = rule_for_bundle(loaded, theta, MGG_NO_MEMORY_FILE)
    assert rule.generator.uses_memory is False and rule.step_size == 3e-3  # α as pre-trained
    assert rule_for_bundle(loaded, theta, MGG_NO_MEMORY_FILE, step_size=1e-4).step_size == 1e-4


def test_a_generator_written_elsewhere_during_training_is_left_as_it_is(
    bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    """Checked before the work and again at the save: a file that appeared while this one
    trained (a second training into the same bundle) is not replaced without --overwrite, and
    the training goes beside it."""
    out = tmp_path / "mgg.safetensors"

    def another_writer(progress: TrainProgress) -> None:
        if not out.exists():
            out.write_bytes(b"another generator")

    with pytest.raises(UsageError, match="written by someone else while this generator trained") as refused:
        train_mgg(bundle_path, clean_folder, out=out, **TINY | {"epochs": 1}, on_progress=another_writer)
    assert out.read_bytes() == b"another generator"
    kept = [path for path in tmp_path.iterdir() if path != out]
    assert len(kept) == 1 and str(kept[0]) in str(refused.value)
    assert load_generator(kept[0]).uses_memory


def test_an_episode_of_several_passes_carries_theta_through_them(
    bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    """Two passes over 8 images at batch 2: one episode of 8 steps, each image seen twice."""
    progress: list[TrainProgress] = []
    settings = TINY | {"epochs": 1}
    report = train_mgg(
        bundle_path, clean_folder, out=tmp_path / "two.safetensors", passes=2, **settings, on_progress=progress.append
    )
    steps = [(p.step, p.steps) for p in progress if p.phase == "train"]
    assert steps == [(step, 8) for step in range(1, 9)]
    # Only the episode's first θ is the source's, without an update of the generator behind it:
    # the second pass (step 5) starts from the θ the first one left.
    assert [p.meta_loss is not None for p in progress if p.phase == "train"] == [False] + [True] * 7
    assert read_metadata(report.path)["passes"] == 2


def test_the_clean_images_term_reaches_the_generator(bundle_path: Path, clean_folder: Path, tmp_path: Path) -> None:
    settings = TINY | {"epochs": 1, "seed": 5}
    plain = train_mgg(bundle_path, clean_folder, out=tmp_path / "plain.safetensors", **settings)
    kept = train_mgg(
        bundle_path, clean_folder, out=tmp_path / "kept.safetensors", meta_objective="cross-entropy+clean", **settings
    )
    assert read_metadata(kept.path)["meta_objective"] == "cross-entropy+clean"
    first, second = load_file(str(plain.path)), load_file(str(kept.path))
    assert any(not torch.equal(first[name], second[name]) for name in first)


def test_a_scaled_generator_learns_its_step_size(bundle_path: Path, clean_folder: Path, tmp_path: Path) -> None:
    report = train_mgg(bundle_path, clean_folder, out=tmp_path / "scaled.safetensors", scaled=True, **TINY)
    metadata = read_metadata(report.path)
    generator = load_generator(report.path)
    assert metadata["scaled"] is True and metadata["scale"] == pytest.approx(generator.scale().item())
    assert generator.scale().item() != 1.0 and generator.parameter_count() == 166


def test_a_bundle_without_generator_says_how_to_make_one(bundle_path: Path) -> None:
    with pytest.raises(UsageError, match="train-mgg"):
        rule_for_bundle(load_bundle(bundle_path), [])


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"held_out": ("gaussian_noise",)}, "evaluation corruptions"),
        ({"held_out": ("no_such_shift",)}, "Unknown corruption"),
        ({"harmonizer": "nope"}, "Unknown harmonizer"),
        ({"num_images": 100}, "needs"),
        ({"meta_objective": "accuracy"}, "Unknown meta-objective"),
        ({"unroll": 0}, "--unroll"),
        ({"passes": 0}, "--passes"),
    ],
)
def test_bad_requests_are_one_sentence(
    bundle_path: Path, clean_folder: Path, tmp_path: Path, settings: dict, words: str
) -> None:
    with pytest.raises(UsageError, match=words):
        train_mgg(bundle_path, clean_folder, out=tmp_path / "x.safetensors", **TINY | settings)
    assert not (tmp_path / "x.safetensors").exists()


def test_the_rule_snapshots_and_restores_through_the_adapter(
    trained: list[Path], bundle_path: Path, clean_folder: Path
) -> None:
    bundle = load_bundle(bundle_path)
    method = Method("mgtta", "test", batch_statistics=True, objectives=("entropy", "alignment"))
    source = torch.cat([param.detach().flatten() for param in norm_affine_parameters(bundle.model).values()])
    rule = MGGRule(load_generator(trained[0]), step_size=1e-2, anchor=source)
    objectives = [Entropy(), FeatureAlignment(bundle.source_stats)]
    norm = BatchStatistics(bundle.model)
    guard = Guard(GuardConfig(), 3)
    adapter = Adapter(bundle.model, method, norm, objectives, rule, bundle.spec.feature_layers, guard)
    stream = list(
        batches(FolderStream(clean_folder, Framing((32, 32)), CLASSES, order="shuffled"), 3, Preprocess(MEAN, STD))
    )
    for batch in stream[:2]:
        adapter.step(batch)
    snapshot = adapter.state_dict()
    assert snapshot["update_rule"]["memory"]["weight"].shape[1:] == (8, 8)
    later = [adapter.step(batch).probabilities for batch in stream[2:5]]
    adapter.load_state_dict(snapshot)
    again = [adapter.step(batch).probabilities for batch in stream[2:5]]
    assert all(torch.equal(a, b) for a, b in zip(later, again, strict=True))
    adapter.close()


def test_an_unrolled_window_reaches_every_update_in_it(bundle_path: Path, clean_folder: Path) -> None:
    """Two updates in one window: the surrogate's gradient is that of L(θ_2) through both."""
    bundle = load_bundle(bundle_path)
    model = FunctionalModel(bundle.model, bundle.spec.feature_layers, [Entropy()], ONE_PROCESS)
    batch = next(
        batches(FolderStream(clean_folder, Framing((32, 32)), CLASSES, order="shuffled"), 4, Preprocess(MEAN, STD))
    )
    torch.manual_seed(0)
    generator = MetaGradientGenerator(memory=False)
    first, second = torch.randn(len(model.source), 2), torch.randn(len(model.source), 2)

    def theta_two() -> torch.Tensor:
        return model.source - 1e-2 * generator(first)[0] - 1e-2 * generator(second)[0]

    theta = theta_two()
    _, losses = model.losses(theta, batch)
    meta_surrogate(theta, model.gradients(losses, theta).sum(dim=0)).backward()
    through_theta = [param.grad.clone() for param in generator.parameters()]
    generator.zero_grad()
    direct = torch.autograd.grad(model.losses(theta_two(), batch)[1].sum(), list(generator.parameters()))
    for expected, got in zip(direct, through_theta, strict=True):
        torch.testing.assert_close(got, expected)
    model.close()


def test_meta_gradient_is_the_gradient_of_the_next_objective(bundle_path: Path, clean_folder: Path) -> None:
    bundle = load_bundle(bundle_path)
    objectives = [Entropy(), FeatureAlignment(bundle.source_stats)]
    model = FunctionalModel(bundle.model, bundle.spec.feature_layers, objectives, ONE_PROCESS)
    batch = next(
        batches(FolderStream(clean_folder, Framing((32, 32)), CLASSES, order="shuffled"), 4, Preprocess(MEAN, STD))
    )
    torch.manual_seed(0)
    generator = MetaGradientGenerator()
    features = torch.randn(len(model.source), 2)
    theta = model.source - 1e-2 * generator(features)[0]

    _, losses = model.losses(theta, batch)
    meta_surrogate(theta, model.gradients(losses, theta).sum(dim=0)).backward()
    through_theta = [param.grad.clone() for param in generator.parameters()]

    generator.zero_grad()
    _, losses = model.losses(model.source - 1e-2 * generator(features)[0], batch)
    direct = torch.autograd.grad(losses.sum(), list(generator.parameters()))
    for expected, got in zip(direct, through_theta, strict=True):
        torch.testing.assert_close(got, expected)
    model.close()
