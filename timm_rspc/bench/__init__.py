"""Robustness benchmarks with the literature's exact conventions (filled in as the pieces land)."""
