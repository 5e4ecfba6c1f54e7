"""Scaling laws, needle-in-a-haystack, benchmarks and contamination analysis (paper sections 3.2.1, 3.4.2, 5)."""
