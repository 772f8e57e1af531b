"""Baselines scored through the same evaluation code as our own models."""
