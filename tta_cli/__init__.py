"""tta-cli: test-time adaptation of deployed image classifiers."""

__version__ = "0.1.0"
