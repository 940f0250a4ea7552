"""Metrics, reports and the run comparison behind evaluate.py."""
