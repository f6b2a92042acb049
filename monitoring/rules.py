"""k8s/monitoring/prometheusrule.yaml from monitoring/rules.yml: one set of rules, two wrappers.

    python -m monitoring.rules           # rewrite the PrometheusRule
    python -m monitoring.rules --check   # exit 1 if it differs from the rules file
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ops import tools

try:
    import yaml
except ImportError:  # PyYAML is a pinned dev dependency; `make tools` installs it too
    tools.ensure_python_packages()
    import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RULES = PROJECT_ROOT / "monitoring" / "rules.yml"
PROMETHEUS_RULE = PROJECT_ROOT / "k8s" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# Generated from monitoring/rules.yml by `python -m monitoring.rules`: edit that file, then run it.
# tests/test_monitoring.py fails when the two differ.
"""


def load_groups(path: Path = RULES) -> list[dict]:
    return yaml.safe_load(path.read_text())["groups"]


def prometheus_rule(groups: list[dict]) -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "rakuten-classifier",
            "labels": {
                "app.kubernetes.io/part-of": "rakuten-classifier",
                # kube-prometheus-stack's Prometheus selects rules with its release label.
                "release": "kube-prometheus-stack",
            },
        },
        "spec": {"groups": groups},
    }


def render(groups: list[dict]) -> str:
    return HEADER + yaml.safe_dump(prometheus_rule(groups), sort_keys=False, width=100_000, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.rules", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    text = render(load_groups())
    if args.check:
        same = PROMETHEUS_RULE.is_file() and PROMETHEUS_RULE.read_text() == text
        print(f"{PROMETHEUS_RULE.relative_to(PROJECT_ROOT)}: {'up to date' if same else 'differs from monitoring/rules.yml'}")
        return 0 if same else 1
    PROMETHEUS_RULE.parent.mkdir(parents=True, exist_ok=True)
    PROMETHEUS_RULE.write_text(text)
    print(f"wrote {PROMETHEUS_RULE.relative_to(PROJECT_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
