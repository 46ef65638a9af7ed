"""Metrics, clip- and recording-level evaluation, plots and the comparison report."""
