"""The heat-map of ``tta-cli analyze``: probe accuracy of each adapted state on each domain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on devices and CI
import matplotlib.pyplot as plt
import numpy as np


def plot_matrix(method: dict[str, Any], name: str, out: Path) -> Path:
    """Rows: the state before any step, the state adapted on each domain alone (A→B) and the state
    adapted on their mix; columns: the domain whose probes it predicted. Cells: accuracy in %."""
    accuracy = method["accuracy"]
    domains = list(accuracy["joint"])
    rows = {"before": accuracy["before"]} | {f"{a} alone": accuracy["alone"][a] for a in domains}
    rows["joint"] = accuracy["joint"]
    values = np.array([[100 * row[b] for b in domains] for row in rows.values()])
    figure, axis = plt.subplots(figsize=(1.1 * len(domains) + 3, 0.5 * len(rows) + 2))
    image = axis.imshow(values, cmap="viridis", aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        axis.text(j, i, f"{value:.1f}", ha="center", va="center", color="white" if value < values.mean() else "black")
    axis.set_xticks(range(len(domains)), domains, rotation=45, ha="right")
    axis.set_yticks(range(len(rows)), list(rows))
    axis.set_xlabel("probes of")
    axis.set_ylabel("adapted on")
    axis.set_title(f"{name}: probe accuracy (%)")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out
