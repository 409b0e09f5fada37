"""Corpora, manifests, folds and audio."""
