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
======================  ==============  ===================================================================
"""

from __future__ import annotations

import psycopg

from .rollup_store import FOLD_LOCK_ID
from .writer import PARTITION_LOCK_ID

__all__ = ["FOLD_LOCK_ID", "PARTITION_LOCK_ID", "REFRESH_LOCK_ID", "try_transaction_lock"]

REFRESH_LOCK_ID = 0x62696C6C72667368  # "billrfsh": held by the one replica refreshing month to date


def try_transaction_lock(conn: psycopg.Connection, lock_id: int) -> bool:
    """Take ``lock_id`` for the rest of the current transaction if no one holds it; False when someone does."""
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (lock_id,)).fetchone()
    return bool(row and row[0])
