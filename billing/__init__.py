"""Billing: the append-only usage ledger and what reads it (usage totals; rating and invoices build on it)."""
