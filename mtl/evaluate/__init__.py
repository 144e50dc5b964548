"""Evaluation: predictions over a split, metrics, reports and plots."""
