"""What a run leaves behind in its run directory."""

from tta_cli.history.run_dir import PredictionWriter, RunDirectory, RunSummary

__all__ = ["PredictionWriter", "RunDirectory", "RunSummary"]
