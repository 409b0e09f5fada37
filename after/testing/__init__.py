"""Helpers for tests: tiny synthetic clips and manifests (shipped in the package, as lhotse
does)."""
