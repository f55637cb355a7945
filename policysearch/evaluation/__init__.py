"""Scoring policies beyond the search: the benchmark against standard augmentations on the test
split, and re-runs of a study's trials with other seeds."""
