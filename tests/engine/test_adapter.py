from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tests.conftest import CLASSES, MEAN, STD
from tta_cli.config import AdaptConfig, GuardConfig
from tta_cli.engine import Adapter, get_method, resolve_device
from tta_cli.engine.build import adapter_for, check_fits
from tta_cli.errors import UsageError
from tta_cli.harmonize import Amortized, Harmonized, Harmonizer
from tta_cli.harmonize.base import combine
from tta_cli.models import load_bundle
from tta_cli.streams import FolderStream, Framing, Preprocess, batches


def first_batch(folder: Path, size: int = 8):
    return next(batches(FolderStream(folder, Framing((32, 32)), CLASSES), size, Preprocess(MEAN, STD)))


def make_adapter(bundle_path: Path, method: str, tmp_path: Path, **settings) -> Adapter:
    bundle = load_bundle(bundle_path)
    config = AdaptConfig(model=bundle_path, source=tmp_path, run=tmp_path / "run", method=method, **settings)
    return adapter_for(bundle, config, torch.device("cpu"))


def test_source_changes_nothing(bundle_path: Path, clean_folder: Path, tmp_path: Path) -> None:
    adapter = make_adapter(bundle_path, "source", tmp_path)
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    batch = first_batch(clean_folder)
    first = adapter.step(batch)
    second = adapter.step(batch)
    torch.testing.assert_close(first.probabilities, second.probabilities)
    for key, value in adapter.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_norm_uses_the_test_batch_statistics(bundle_path: Path, clean_folder: Path, tmp_path: Path) -> None:
    adapter = make_adapter(bundle_path, "norm", tmp_path)
    batch = first_batch(clean_folder)
    result = adapter.step(batch)
    reference = load_bundle(bundle_path).model.train()
    with torch.no_grad():
        expected = reference(batch.images).softmax(1)
    torch.testing.assert_close(result.probabilities, expected)
    assert all(not p.requires_grad for p in adapter.model.parameters())


def test_tent_moves_only_norm_affine_parameters(bundle_path: Path, clean_folder: Path, tmp_path: Path) -> None:
    adapter = make_adapter(bundle_path, "tent", tmp_path, lr=1e-2)
    before = {name: p.detach().clone() for name, p in adapter.model.named_parameters()}
    batch = first_batch(clean_folder)
    result = adapter.step(batch)
    assert result.update_norm > 0
    assert set(result.losses) == {"entropy"}
    moved = {name for name, p in adapter.model.named_parameters() if not torch.equal(p, before[name])}
    assert moved and moved == set(adapter.named_params)


def test_tent_predictions_are_taken_before_the_update(bundle_path: Path, clean_folder: Path, tmp_path: Path) -> None:
    adapter = make_adapter(bundle_path, "tent", tmp_path, lr=1e-1)
    batch = first_batch(clean_folder)
    with torch.no_grad():
        expected = adapter.model(batch.images).softmax(1)
    result = adapter.step(batch)
    torch.testing.assert_close(result.probabilities, expected)
    with torch.no_grad():
        after = adapter.model(batch.images).softmax(1)
    assert not torch.allclose(after, expected)


def test_tent_lowers_the_entropy_of_a_repeated_batch(bundle_path: Path, clean_folder: Path, tmp_path: Path) -> None:
    adapter = make_adapter(bundle_path, "tent", tmp_path, lr=1e-2)
    batch = first_batch(clean_folder, size=18)
    entropies = [adapter.step(batch).entropy.mean().item() for _ in range(5)]
    assert entropies[-1] < entropies[0]


def test_device_parsing() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(UsageError, match=r"Unknown device|Unsupported device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_unknown_method() -> None:
    with pytest.raises(UsageError, match="Unknown method 'tnet'"):
        get_method("tnet")


def test_method_variants_stack() -> None:
    method = get_method("mgtta:gh+tbr+memory32+reset500+guard")
    assert (method.name, method.harmonizer, method.norm, method.memory, method.reset_every, method.guard) == (
        "mgtta:gh+tbr+memory32+reset500+guard",
        "gh",
        "tbr",
        32,
        500,
        True,
    )
    assert get_method("rdumb").reset_every == 1000
    with pytest.raises(UsageError, match="resetN"):
        get_method("tent+reset")


def test_method_variants_name_another_harmonizer() -> None:
    variant = get_method("harmonized:sam-gs")
    assert variant.harmonizer == "sam-gs" and variant.name == "harmonized:sam-gs"
    assert variant.objectives == get_method("harmonized").objectives
    with pytest.raises(UsageError, match="nothing to harmonize"):
        get_method("tent:gh")
    with pytest.raises(UsageError, match="Unknown harmonizer"):
        get_method("harmonized:average")
    plus = get_method("mgtta:gh+++guard")  # GH++ keeps its pluses; the variant follows
    assert plus.harmonizer == "gh++" and plus.guard and get_method("harmonized:gh+tbr").harmonizer == "gh"


def test_alignment_variants_set_its_options_and_refuse_what_cannot_be_meant() -> None:
    method = get_method("harmonized:sum+align1.6+features31")
    assert method.objective_options["alignment"] == {"weight": 1.6, "layers": (0, 2)}
    assert get_method("mgtta+align1e-3").objective_options["alignment"] == {"weight": 1e-3}
    assert "alignment" not in get_method("harmonized").objective_options
    for wrong, message in (
        ("tent+align1", "no feature alignment"),
        ("eata+features1", "no feature alignment"),
        ("harmonized+align0", "positive number"),
        ("harmonized+alignnan", "positive number"),
        ("harmonized+aligninf", "positive number"),
        ("harmonized+align1_000", "positive number"),
        ("harmonized+align", "positive number"),
        ("harmonized+features0", "1 to 9"),
        ("harmonized+features11", "1 to 9"),
        ("harmonized+features\u00b2", "1 to 9"),
        ("tent+reset\u0661", "resetN"),
    ):
        with pytest.raises(UsageError, match=message):
            get_method(wrong)


def test_a_method_that_does_not_fit_the_bundle_is_refused_before_any_work(bundle_path: Path) -> None:
    bundle = load_bundle(bundle_path)
    check_fits(bundle, get_method("harmonized+features1"))
    with pytest.raises(UsageError, match="feature layers"):
        check_fits(bundle, get_method("harmonized+features9"))
    with pytest.raises(UsageError, match=r"has no mgg-no-memory\.safetensors"):
        check_fits(bundle, get_method("mgtta-nomem"))


def test_an_amortized_harmonizer_weighs_the_losses_between_its_harmonizations(
    bundle_path: Path, clean_folder: Path, tmp_path: Path
) -> None:
    """Between harmonizations one backward pass of ``Σ w_k·L_k`` takes the step that weighing the
    per-loss gradients by ``w`` takes; the weights and the count are state, restored exactly."""
    assert get_method("harmonized+harmonize2").harmonize_every == 2
    with pytest.raises(UsageError, match="nothing to harmonize"):
        get_method("tent+harmonize2")
    batch = first_batch(clean_folder)
    unguarded = {"guard": GuardConfig(enabled=False)}
    amortized = make_adapter(bundle_path, "harmonized+harmonize2", tmp_path, **unguarded)
    exact = make_adapter(bundle_path, "harmonized", tmp_path, **unguarded)
    assert "cosine" in amortized.step(batch).diagnostics and "cosine" in exact.step(batch).diagnostics
    weights = torch.tensor([1.7, 0.3])
    assert isinstance(amortized.harmonizer, Amortized)
    amortized.harmonizer.weights = weights  # any weights: the identity holds for all of them
    state = copy.deepcopy(amortized.state_dict())  # the optimizer's moments are updated in place
    exact.harmonizer = Fixed(weights)
    second = amortized.step(batch)
    exact.step(batch)
    assert "cosine" not in second.diagnostics and second.diagnostics == {}
    for amortized_param, exact_param in zip(amortized.params, exact.params, strict=True):
        torch.testing.assert_close(amortized_param, exact_param)
    after_second = [param.detach().clone() for param in amortized.params]
    assert "cosine" in amortized.step(batch).diagnostics  # the third step harmonizes again
    amortized.load_state_dict(state)
    assert "cosine" not in amortized.step(batch).diagnostics
    for param, expected in zip(amortized.params, after_second, strict=True):
        torch.testing.assert_close(param, expected)


class Fixed(Harmonizer):
    """The same weights on every step."""

    def __init__(self, weights: torch.Tensor) -> None:
        self.weights = weights

    def __call__(self, gradients: torch.Tensor) -> Harmonized:
        return combine(gradients, self.weights.to(gradients))


@pytest.mark.parametrize("norm", ["batch", "robust", "tbr", "balanced"])
def test_the_memory_forward_leaves_the_smoothed_statistics_as_the_prediction_left_them(
    bundle_path: Path, clean_folder: Path, tmp_path: Path, norm: str
) -> None:
    batch = first_batch(clean_folder, 6)
    statistics = []
    for method in (f"norm+{norm}", f"tent+{norm}+memory6"):  # the memory's forward then a backward
        adapter = make_adapter(bundle_path, method, tmp_path / method)
        adapter.step(batch)
        statistics.append(adapter._statistics())
    assert statistics[0].keys() == statistics[1].keys()
    for name, value in statistics[0].items():
        torch.testing.assert_close(statistics[1][name], value, msg=name)
