"""Loopback servers for tests, benchmarks and the demo (image server, Hub-compatible server)."""
