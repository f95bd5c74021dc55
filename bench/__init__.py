"""Benchmarks of jobgate against Flower: runnable scripts, see docs/performance.md."""
