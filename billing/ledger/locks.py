"""The advisory locks spanmeter processes coordinate with, in one place.

Every id is eight ASCII characters read as a 64-bit integer, the same in every process and replica. All are
transaction-level (released at commit or rollback, or when the connection is lost), so a crashed holder never
keeps one.

======================  ==============  ===================================================================
id                      held by         serialises
======================  ==============  ===================================================================
``REFRESH_LOCK_ID``     billing         the month-to-date refresh: one replica at a time (try, never wait)
``FOLD_LOCK_ID``        rollups         the folder and ``rollups rebuild`` (:mod:`.rollup_store`)
``PARTITION_LOCK_ID``   partitions      creating, archiving and restoring ledger partitions (:mod:`.writer`)
``PRICES_LOCK_ID``      prices          importing a price book version (exclusive) against finalizing (shared)
======================  ==============  ===================================================================
"""

from __future__ import annotations

import psycopg

from .rollup_store import FOLD_LOCK_ID
from .writer import PARTITION_LOCK_ID

__all__ = [
    "FOLD_LOCK_ID",
    "PARTITION_LOCK_ID",
    "PRICES_LOCK_ID",
    "REFRESH_LOCK_ID",
    "hold_prices",
    "try_transaction_lock",
]

REFRESH_LOCK_ID = 0x62696C6C72667368  # "billrfsh": held by the one replica refreshing month to date
PRICES_LOCK_ID = 0x7072696365626B73  # "pricebks": a book import waits for finalizing invoices, and they for it


def try_transaction_lock(conn: psycopg.Connection, lock_id: int) -> bool:
    """Take ``lock_id`` for the rest of the current transaction if no one holds it; False when someone does."""
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (lock_id,)).fetchone()
    return bool(row and row[0])


def hold_prices(conn: psycopg.Connection, *, exclusive: bool) -> None:
    """Until the transaction ends: a book import (exclusive) and finalizing invoices (shared) exclude each
    other, so an import's check of the finalized periods cannot miss an invoice being finalized meanwhile."""
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    conn.execute(f"SELECT {function}(%s)", (PRICES_LOCK_ID,))
