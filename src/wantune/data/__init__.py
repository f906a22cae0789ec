"""Datasets: sources, captions, frame windows, buckets, checks and preparation."""
