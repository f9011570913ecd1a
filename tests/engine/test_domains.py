"""Weighting across domains: clusters that persist, weights in their documented range, and
clusters restored exactly by a rollback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tta_cli.engine import Session
from tta_cli.engine.domains import DomainClusters


def two_conditions(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of two conditions far apart, shuffled: smooth gradients, and the same under strong
    pixel noise; and which condition each input is in."""
    generator = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-1, 1, 16)
    scale = 0.5 + torch.rand(count, 3, 1, 1, generator=generator)
    base = ramp[None, None, :, None] * ramp[None, None, None, :] * scale
    noisy = torch.rand(count, generator=generator) < 0.5
    images = base + noisy[:, None, None, None] * torch.randn(count, 3, 16, 16, generator=generator)
    return images, noisy


def test_two_clearly_separated_conditions_give_two_clusters_that_persist() -> None:
    clusters = DomainClusters()
    labels, truth = [], []
    for seed in range(6):
        images, noisy = two_conditions(64, seed)
        labels.append(clusters.assign(images))
        truth.append(noisy)
    assigned, noisy = torch.cat(labels), torch.cat(truth)
    assert clusters.size == 2
    # Each cluster holds one condition, from the first batch to the last.
    for cluster in range(2):
        members = noisy[assigned == cluster]
        assert members.float().mean().item() in (0.0, 1.0)


def test_weights_average_one_and_give_each_cluster_its_share() -> None:
    clusters = DomainClusters()
    for seed in range(3):
        images, noisy = two_conditions(64, seed)
        # The noisy inputs' entropy falls more slowly than the smooth ones': a larger share.
        entropies = torch.where(noisy, torch.tensor(1.0), torch.tensor(1.0 / (seed + 1)))
        assignment = clusters.weigh(images, entropies)
        weights = assignment.weights
        assert weights.mean().item() == pytest.approx(1.0)
        assert bool((weights > 0).all() and (weights <= len(weights)).all())
        shares = [weights[assignment.clusters == c].sum().item() / len(weights) for c in assignment.clusters.unique()]
        assert sum(shares) == pytest.approx(1.0)
        assert all(0 < share <= 1 for share in shares)
    noisy_cluster = int(assignment.clusters[noisy][0])
    noisy_share = weights[assignment.clusters == noisy_cluster].sum().item() / len(weights)
    assert noisy_share > 0.5


def test_assigning_without_learning_moves_nothing() -> None:
    clusters = DomainClusters()
    images, _ = two_conditions(64, 0)
    clusters.assign(images)
    before = clusters.state_dict()
    clusters.weigh(two_conditions(64, 1)[0], torch.rand(64), learn=False)
    after = clusters.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_rollback_restores_the_clusters(bundle_path: Path, tmp_path: Path) -> None:
    with Session.start(bundle_path, run=tmp_path / "run", method="tent", domain_weighting=True) as session:
        states = []
        for seed in range(4):
            images, _ = two_conditions(12, seed)
            frames = np.clip(np.rint(127 + 40 * images.permute(0, 2, 3, 1).numpy()), 0, 255).astype(np.uint8)
            frames = np.stack([np.kron(frame, np.ones((2, 2, 1), dtype=np.uint8)) for frame in frames])
            session.adapt(frames)
            states.append(session.adapter.domains.state_dict())
        assert not torch.equal(states[1]["centres"], states[3]["centres"]) or not torch.equal(
            states[1]["counts"], states[3]["counts"]
        )
        session.rollback("2")
        restored = session.adapter.domains.state_dict()
        assert all(torch.equal(restored[key], states[1][key]) for key in states[1])


def test_domain_weighting_needs_gradient_steps(bundle_path: Path, tmp_path: Path) -> None:
    from tta_cli.errors import UsageError

    with pytest.raises(UsageError, match="norm takes no gradient steps"):
        Session.start(bundle_path, run=tmp_path / "run", method="norm", domain_weighting=True)
