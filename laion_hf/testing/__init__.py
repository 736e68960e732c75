"""Loopback servers for tests, benchmarks and the demo (image server, Hub-compatible server),
and throwaway TLS certificates for serving HTTPS on loopback (``tls``)."""
