"""Keyword-spotting evaluation: manifests, metrics, scoring backends (shared/specs/kws-eval.md)."""
