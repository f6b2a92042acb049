"""Monitoring of the serving system: a local Prometheus, its rules, the checks, and the tools
(kubectl, promtool) that the Kubernetes and monitoring tests use. See docs/metrics.md."""
