#!/usr/bin/env python3
"""Copy the files the Kubernetes manifests ship from their sources (kustomize reads only
files below a kustomization); `--check` exits 1, naming each stale copy, instead."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
GRAFANA = ROOT / "dashboards" / "grafana"
RULES = ROOT / "deploy" / "prometheus" / "safecity.rules.yml"


def copies() -> dict[Path, Path]:
    """{copy in deploy/kubernetes: its source}."""
    pairs = {
        K8S / "base" / "broker-mosquitto.conf": ROOT / "broker" / "mosquitto.conf",
        K8S / "components" / "prometheus-rules" / RULES.name: RULES,
    }
    pairs[K8S / "components" / "grafana" / "config" / "grafana.ini"] = (
        GRAFANA / "config" / "grafana.ini"
    )
    for board in sorted((GRAFANA / "dashboards").glob("*.json")):
        pairs[K8S / "components" / "grafana" / "dashboards" / board.name] = board
    kinds = (("datasources", "datasources"), ("dashboards", "providers"), ("alerting", "alerting"))
    for kind, folder in kinds:
        for source in sorted((GRAFANA / "provisioning" / kind).glob("*.yaml")):
            pairs[K8S / "components" / "grafana" / folder / source.name] = source
    return pairs


def main(argv: list[str] | None = None) -> int:
    """Write (or check) every copy."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    pairs = copies()
    stale = [c for c, s in pairs.items() if not c.exists() or c.read_bytes() != s.read_bytes()]
    wanted = set(pairs)
    extra = [
        p
        for folder in ("datasources", "dashboards", "providers", "alerting", "config")
        for p in (K8S / "components" / "grafana" / folder).glob("*")
        if p not in wanted
    ]
    if args.check:
        for path in [*stale, *extra]:
            print(f"stale: {path.relative_to(ROOT)} (run scripts/sync_kubernetes.py)")
        return 1 if stale or extra else 0
    for copy in stale:
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(pairs[copy].read_bytes())
        print(f"wrote {copy.relative_to(ROOT)}")
    for path in extra:
        path.unlink()
        print(f"removed {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
