"""Benchmarks: commands whose results are written to files and quoted in the docs."""
