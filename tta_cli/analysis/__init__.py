"""Transfer and interference across domains: ``tta-cli analyze`` and the report of ``bench``'s
``mixed`` protocol."""

from tta_cli.analysis.transfer import Split, split, split_by_id

__all__ = ["Split", "split", "split_by_id"]
