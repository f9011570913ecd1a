"""Weighting across domains without domain labels (``--domain-weighting``; METHODS.md §4).

A mixed stream (day and night, two cameras) adapts on one objective, and the shift with the
most images in a batch steers the update. Here each input is put in a cluster of inputs with
like low-level statistics, clusters persist from batch to batch, and every cluster present in a
batch gets its own share of the objective, so that no group dominates the update.

**Features** of an input, on its luminance as the model sees it (four numbers, each a property of
the imaging more than of the content): the mean (exposure), the log standard deviation (contrast:
fog, low contrast), the log of the mean absolute difference of neighbouring pixels over the
standard deviation (sharpness for the contrast: blur lowers it) and the log of the mean absolute
Laplacian over that difference (how much of the detail is at the finest scale: sensor noise and
pixelation raise it, blur lowers it). On CIFAR-10-C at severity 5 the last one alone separates
the noises (1.0 ± 0.05) from defocus, motion and zoom blur (0.3-0.5 ± 0.1); ``scripts/domain_features.py`` prints
them per corruption.

**The first clusters** come from the first batch: Gaussian mixtures of 1 to ``max_clusters``
components with diagonal covariances, the one with the lowest BIC kept (scikit-learn). Content
still shows in the features: a stream of one CIFAR-10-C corruption gives two or three clusters,
a mix of three (noise, fog, blur) clusters that each hold mostly one, and the mix of all 15
groups like corruptions (the noises; the blurs; snow, frost and brightness; contrast), as
``scripts/domain_features.py`` measures (docs/bench/domains/features.md).

**The online assignment** (leader clustering with a χ² gate). Every later input joins the
cluster nearest in units of that cluster's spread σ_c when its squared distance is within the
99.9 % quantile of χ² with four degrees of freedom (what a Gaussian cluster's own members exceed
once in a thousand); otherwise it starts a new cluster, with the spread of the nearest (content
varies about as much under every condition), up to ``max_clusters``, after which it joins the
nearest. A centre and its spread follow the running mean and variance of their members
(MacQueen's sequential k-means), at a rate never below ``1 / horizon`` so that they follow a
condition that drifts.

**Shares** (the dynamic loss weighting of multi-task learning, Liu et al., CVPR 2019, "DWA",
applied per cluster): cluster c present in the batch gets the share
``exp(r_c / T) / Σ exp(r_c' / T)`` with ``r_c`` its mean prediction entropy in the latest batch
it was in over that of the batch before (1 until it has two), and T = 2 as in DWA: a cluster
whose loss falls more slowly than the others' gets more of the update. Shares lie in (0, 1] and
sum to 1; an input's weight is its cluster's share times the batch size over the cluster's
count in the batch, so the weights average 1 over the batch and lie in (0, batch size].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import chi2
from sklearn.mixture import GaussianMixture

TEMPERATURE = 2.0
"""DWA's temperature (Liu et al., CVPR 2019)."""
FEATURES = 4
GATE = float(chi2.ppf(0.999, FEATURES))
"""A cluster's own Gaussian members lie beyond this squared distance once in a thousand."""
MIN_SCALE = 1e-3
"""The least spread of a feature in a cluster: a condition of identical images still has a scale."""


def low_level_features(images: torch.Tensor) -> torch.Tensor:
    """``N × 4``: exposure, log contrast, log sharpness for the contrast and log finest-scale
    detail of each ``N × C × H × W`` input's luminance (the mean over its channels)."""
    luma = images.mean(dim=1, keepdim=True)
    flat = luma.flatten(1)
    spread = flat.std(dim=1).add(1e-6)
    across = (luma[..., 1:] - luma[..., :-1]).abs().flatten(1)
    down = (luma[..., 1:, :] - luma[..., :-1, :]).abs().flatten(1)
    difference = torch.cat([across, down], dim=1).mean(dim=1).add(1e-6)
    inner = luma[..., 1:-1, 1:-1]
    neighbours = luma[..., 2:, 1:-1] + luma[..., :-2, 1:-1] + luma[..., 1:-1, 2:] + luma[..., 1:-1, :-2]
    laplacian = (4 * inner - neighbours).abs().flatten(1).mean(dim=1).add(1e-6)
    return torch.stack([flat.mean(dim=1), spread.log(), (difference / spread).log(), (laplacian / difference).log()], 1)


@dataclass
class Assignment:
    """The clusters of a batch's inputs and the weight of each input (mean 1)."""

    clusters: torch.Tensor
    weights: torch.Tensor


class DomainClusters:
    """Clusters that persist across batches, and each input's weight in the objective."""

    def __init__(self, max_clusters: int = 8, horizon: int = 1000) -> None:
        self.max_clusters, self.horizon = max_clusters, horizon
        self.reset()

    def reset(self) -> None:
        self.centres: torch.Tensor | None = None  # K × D
        self.counts = torch.zeros(0)
        self.scales = torch.zeros(0, FEATURES)  # K × D
        self.entropies = torch.zeros(0, 2)  # K × (before last, last); 0: not seen

    @property
    def size(self) -> int:
        return len(self.counts)

    def assign(self, images: torch.Tensor, learn: bool = True) -> torch.Tensor:
        """Each input's cluster; with ``learn``, new clusters start and centres move."""
        features = low_level_features(images.detach()).float().cpu()
        if self.centres is None:
            if not learn:
                return torch.zeros(len(features), dtype=torch.long)
            return self._first(features)
        clusters = torch.empty(len(features), dtype=torch.long)
        for index, feature in enumerate(features):
            distances = self._distances(feature)
            nearest = int(distances.argmin())
            if learn and distances[nearest] > GATE and self.size < self.max_clusters:
                nearest = self._start(feature, nearest)
            elif learn:
                self._follow(nearest, feature)
            clusters[index] = nearest
        return clusters

    def _first(self, features: torch.Tensor) -> torch.Tensor:
        """The first batch's clusters: the Gaussian mixture of lowest BIC, a diagonal covariance per component."""
        data = features.double().numpy()
        data = data + np.random.default_rng(0).normal(0, 1e-6, data.shape)  # identical inputs stay fittable
        fits = [
            GaussianMixture(count, covariance_type="diag", random_state=0).fit(data)
            for count in range(1, min(self.max_clusters, len(data)) + 1)
        ]
        best = min(fits, key=lambda fit: fit.bic(data))
        clusters = torch.from_numpy(best.predict(data)).long()
        used = clusters.unique()
        clusters = torch.searchsorted(used, clusters)
        self.centres = torch.from_numpy(best.means_[used.numpy()]).float()
        self.counts = torch.bincount(clusters).float()
        self.scales = torch.from_numpy(best.covariances_[used.numpy()]).float().sqrt().clamp_min(MIN_SCALE)
        self.entropies = torch.zeros(len(used), 2)
        return clusters

    def weigh(self, images: torch.Tensor, entropies: torch.Tensor, learn: bool = True) -> Assignment:
        """The batch's clusters and weights; with ``learn`` each cluster's entropy is recorded."""
        clusters = self.assign(images, learn)
        present = clusters.unique()
        entropies = entropies.detach().float().cpu()
        ratios = torch.tensor([self._ratio(int(cluster)) for cluster in present])
        shares = (ratios / TEMPERATURE).softmax(dim=0)
        weights = torch.empty(len(clusters))
        for cluster, share in zip(present.tolist(), shares.tolist(), strict=True):
            members = clusters == cluster
            weights[members] = share * len(clusters) / int(members.sum())
            if learn:
                self.entropies[cluster] = torch.stack([self.entropies[cluster, 1], entropies[members].mean()])
        return Assignment(clusters.to(images.device), weights.to(images.device))

    def _distances(self, feature: torch.Tensor) -> torch.Tensor:
        assert self.centres is not None
        return ((self.centres - feature) / self.scales).pow(2).sum(dim=1)

    def _start(self, feature: torch.Tensor, nearest: int) -> int:
        assert self.centres is not None
        self.centres = torch.cat([self.centres, feature[None]])
        self.scales = torch.cat([self.scales, self.scales[nearest : nearest + 1]])
        self.counts = torch.cat([self.counts, torch.ones(1)])
        self.entropies = torch.cat([self.entropies, torch.zeros(1, 2)])
        return self.size - 1

    def _follow(self, cluster: int, feature: torch.Tensor) -> None:
        assert self.centres is not None
        self.counts[cluster] += 1
        rate = max(1 / float(self.counts[cluster]), 1 / self.horizon)
        residual = feature - self.centres[cluster]
        self.centres[cluster] += rate * residual
        variance = self.scales[cluster].pow(2)
        self.scales[cluster] = (variance + rate * (residual.pow(2) - variance)).sqrt().clamp_min(MIN_SCALE)

    def _ratio(self, cluster: int) -> float:
        before, last = self.entropies[cluster].tolist()
        return last / before if before > 0 and last > 0 else 1.0

    def state_dict(self) -> dict[str, Any]:
        if self.centres is None:
            return {}
        return {
            "centres": self.centres.clone(),
            "counts": self.counts.clone(),
            "scales": self.scales.clone(),
            "entropies": self.entropies.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        if state:
            self.centres, self.counts = state["centres"].clone(), state["counts"].clone()
            self.scales, self.entropies = state["scales"].clone(), state["entropies"].clone()
