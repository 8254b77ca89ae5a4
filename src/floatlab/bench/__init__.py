"""Benchmark harnesses behind ``floatlab bench`` (speed against peers, printed as ratios)."""
