"""Heavy jobs that make the artefacts tta-cli ships: the sample source model."""
