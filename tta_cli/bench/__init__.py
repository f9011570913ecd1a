"""Benchmarks: commands whose results are written to files and quoted in the docs.

``run_bench`` (``tta-cli bench``) compares methods on a labeled clean folder under the
corruption benchmark: ``streams`` builds and caches the shifted streams, ``orders`` sets the
order their images arrive in (i.i.d., by class, label-correlated, video-like), ``protocols`` runs
a method through them (reset or continual, online evaluation), ``speed`` measures step time
against the forward+backward floor, ``report`` writes ``bench.json``, ``bench.md`` and
``bench.png``. ``history_store`` measures the history store's storage and rollback cost.
"""

from tta_cli.bench.run import BenchConfig, BenchProgress, run_bench

__all__ = ["BenchConfig", "BenchProgress", "run_bench"]
