"""Bench preload for the diagnostic phase (3n): ``spanmeter serve`` with LedgerWriter's statement from before the
key registry (migration 0018), so serve's cost of the registry shows side by side with (3). Loaded through
``BENCH_SERVE_PRELOAD`` by ``ingest_bench.py --phases …,3n``; its rows go unregistered, so bench ledgers only."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _ledger

from spanmeter.billing.ledger.writer import LedgerWriter

LedgerWriter._insert = staticmethod(_ledger.insert_without_registry)  # type: ignore[method-assign]
