"""Benchmarks and load generation against the services."""
