"""Exporters: where metered usage goes. The ledger exporter is the only one that bills."""

from .ledger import LedgerExporter, LedgerUnavailable, PendingWrite

__all__ = ["LedgerExporter", "LedgerUnavailable", "PendingWrite"]
