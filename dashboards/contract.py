"""What other parts of spanmeter and Grafana rely on: the dashboards' uids and where their JSON lives.
Importable without the Grafana Foundation SDK (the image and ``spanmeter serve`` do not install it)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DASHBOARD_UIDS", "JSON_DIR", "TAGS"]

#: Stable uids: alerts link to ``<grafana>/d/<uid>``, so these never change.
DASHBOARD_UIDS = {"pipeline": "spanmeter-pipeline", "slos": "spanmeter-slos", "billing": "spanmeter-billing"}
TAGS = ["spanmeter"]
JSON_DIR = Path(__file__).resolve().parent / "json"
