"""Benchmarks that drive a real server process (see bench/README.md)."""
