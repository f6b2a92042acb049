"""Monitoring of the serving system: the Prometheus configuration and rules, the class drift rule's
data, and the checks that they hold. The local Prometheus runner and the tool installer live in
ops/ (ops/prometheus.py, ops/tools.py). See docs/metrics.md."""
