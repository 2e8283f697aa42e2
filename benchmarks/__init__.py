"""Benchmarks of papa_bayes: speed, label efficiency, calibration. Each writes JSON + Markdown."""
