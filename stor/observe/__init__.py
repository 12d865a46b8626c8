"""Observability: statsd, Prometheus, logs and their outputs, GELF, access events."""
