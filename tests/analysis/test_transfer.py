"""Transfer and interference: the per-sample split, and ``tta-cli analyze`` end to end on a tiny
model with two synthetic domains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CLASSES
from tests.test_cli import tta
from tta_cli.analysis import split, split_by_id
from tta_cli.history import HistoryStore


def test_the_split_counts_each_kind_of_sample_once() -> None:
    # Right answers known per sample: alone / jointly.
    alone = [True, True, True, False, False, False, True]
    joint = [True, False, False, True, False, True, True]
    result = split(alone, joint)
    assert (result.samples, result.transfer, result.interference) == (7, 2, 2)
    # Accuracy jointly minus alone is transfer minus interference.
    assert np.mean(joint) - np.mean(alone) == pytest.approx(result.transfer_rate - result.interference_rate)


def test_the_loss_difference_splits_without_a_threshold() -> None:
    result = split([True, False, True], [True, True, False], [0.5, 2.0, 0.1], [0.4, 0.3, 1.9])
    assert (result.helped, result.hurt) == (2, 1)
    assert result.mean_loss_difference == pytest.approx((-0.1 - 1.7 + 1.8) / 3)


def test_samples_are_matched_by_id_whatever_their_order() -> None:
    alone = {"a": True, "b": False, "c": True}
    joint = {"c": False, "a": True, "b": True, "only-joint": True}
    result = split_by_id(alone, joint)
    assert (result.samples, result.transfer, result.interference) == (3, 1, 1)


def test_the_split_refuses_samples_that_do_not_pair() -> None:
    with pytest.raises(ValueError, match="2 samples alone against 3"):
        split([True, False], [True, False, True])


def write_domain(root: Path, kind: str, per_class: int = 8, seed: int = 0) -> Path:
    """Class by colour, as the tiny bundle's source; ``smooth`` images are flat, ``noisy`` ones
    carry strong pixel noise: two conditions far apart."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            base = np.zeros((32, 32, 3))
            base[..., index % 3] = 160
            noise = rng.normal(0, 70 if kind == "noisy" else 3, base.shape)
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(root / name / f"{number:03d}.png")
    return root


def test_analyze_compares_each_domain_alone_and_jointly_and_leaves_ordinary_runs(
    bundle_path: Path, tmp_path: Path
) -> None:
    smooth = write_domain(tmp_path / "smooth", "smooth")
    noisy = write_domain(tmp_path / "noisy", "noisy", seed=1)
    out = tmp_path / "analysis"
    result = tta(
        "analyze",
        "--model", bundle_path,
        "--domain", f"smooth={smooth}",
        "--domain", f"noisy={noisy}",
        "--out", out,
        "--batch-size", "6",
        "--probe-fraction", "0.25",
        "--domain-weighting",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["domains"]["smooth"] == {"adapt_images": 18, "probe_images": 6, "skipped": 0}
    tent = analysis["methods"]["tent"]
    assert set(tent["accuracy"]["alone"]) == {"smooth", "noisy"}
    for name, parts in tent["split"].items():
        # The split agrees with the accuracies it comes from.
        alone, joint = tent["accuracy"]["alone"][name][name], tent["accuracy"]["joint"][name]
        assert joint - alone == pytest.approx((parts["transfer"] - parts["interference"]) / parts["samples"])
    assert (out / "tent.png").stat().st_size > 0
    # Each run is an ordinary run directory with its history; the joint one recorded its clusters.
    store = HistoryStore.open(out / "runs" / "tent" / "joint")
    try:
        steps = store.steps()
        assert len(steps) == 6  # 36 images to adapt on, batches of 6
        assert all(step.diagnostics["clusters_total"] >= 1 for step in steps)
    finally:
        store.close()
    assert (out / "runs" / "tent" / "alone-noisy" / "history.db").is_file()


def test_analyze_refuses_a_method_that_takes_no_steps(bundle_path: Path, tmp_path: Path) -> None:
    smooth = write_domain(tmp_path / "smooth", "smooth", per_class=2)
    arguments = ["--model", bundle_path, "--out", tmp_path / "out", "--method", "norm"]
    result = tta("analyze", *arguments, "--domain", f"a={smooth}", "--domain", f"b={smooth}")
    assert result.returncode == 2
    assert "norm takes no gradient steps" in result.stderr
