"""Archiving closed months of the ledger to files, and bringing them back (``spanmeter db archive`` / ``restore``).

``archive(conn, before, directory)`` moves every partition of ``usage_events`` that ends on or before
``before`` (oldest first) out of the database, one transaction per partition:

1. **Refused unless the month is closed.** Its end is older than the accepted span age plus clock skew (no
   receiver can take a span of it any more), no rollup delta of it is pending (its rollups are final; they
   stay, and keep explaining its invoices), and every account with usage in it has a finalized invoice for
   each of its months. The legacy partition (everything before the cutover of migration 0010) goes as one
   file, once ``before`` is past its end.
2. **Exported, then verified.** A SHARE lock on the partition (no row can arrive meanwhile), then ``COPY``
   of every row in key order into ``<partition>.copy.gz`` (gzip of PostgreSQL's COPY text, reproducible),
   written to a temporary name, fsynced and renamed; the file is read back and its SHA-256 and row count
   must match what was exported and ``count(*)``. ``<partition>.json`` (the manifest) records the bounds,
   columns, rows, checksum, schema revision, who and when.
3. **Only then detached.** The archive is recorded in ``usage_partition_archives`` (append-only), the
   partition leaves ``usage_event_partitions`` and is detached and dropped, in the same transaction. The
   event trigger that refuses a detach checks exactly that bookkeeping, so nothing else may detach one.
   The detach takes an ACCESS EXCLUSIVE lock on ``usage_events`` for a moment (ingest waits, then goes on);
   if it cannot have it within 10 s (a long transaction), nothing is archived and the command says retry.

A span of an archived month arriving later is kept as ``archived_period``, never billed: with the month's
rows gone, the ledger could not tell it from a duplicate. Its key stays in the key registry
(``usage_event_keys``, migration 0018), so the same span re-sent with an end time in a live month is a
``key_conflict``, not a second bill.

``restore(conn, manifest)`` checks the file against its manifest and the archive record (SHA-256, rows),
recreates the partition below the oldest attached one (restore the newest archived month first), loads it
with ``COPY`` directly into the partition (its rollups never left, so no delta is written), registers the keys
the registry does not hold yet (a month archived before 0018) and attaches it.
"""

from __future__ import annotations

import getpass
import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from .models import LEDGER_PARTITION
from .partitions import coverage, list_partitions
from .writer import PARTITION_LOCK_ID

__all__ = ["ARCHIVE_FORMAT", "ArchiveError", "ArchivedPartition", "archive", "read_manifest", "restore"]

ARCHIVE_FORMAT = "spanmeter-ledger-archive/1"
_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """An archive or restore that must not happen (the message says why and what to do)."""


@dataclass(frozen=True)
class ArchivedPartition:
    partition: str
    from_at: datetime | None
    to_at: datetime
    rows: int
    sha256: str
    data_file: Path
    manifest: Path


def _columns(conn: psycopg.Connection) -> list[str]:
    return [
        name
        for (name,) in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'usage_events'::regclass AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum"
        )
    ]


def _month(moment: datetime | None) -> str:
    return "the beginning" if moment is None else f"{moment:%Y-%m}"


def _check_closed(
    conn: psycopg.Connection, name: str, from_at: datetime | None, to_at: datetime, now: datetime, window: timedelta
) -> None:
    if to_at > now - window:
        raise ArchiveError(
            f"{name} ({_month(from_at)} to {to_at:%Y-%m}) may still receive spans until {to_at + window:%Y-%m-%d %H:%M} "
            "UTC (spans up to SPANMETER_MAX_SPAN_AGE_SECONDS old, plus the clock skew, are accepted): archive it after that"
        )
    start = from_at or datetime.min.replace(tzinfo=UTC)
    pending = conn.execute(
        "SELECT count(*) FROM usage_rollup_deltas WHERE bucket_start >= %s AND bucket_start < %s", (start, to_at)
    ).fetchone()[0]
    if pending:
        raise ArchiveError(
            f"{pending} rollup deltas of {name} are not folded yet: let `spanmeter serve` fold them (a few seconds), "
            "then archive"
        )
    unbilled = conn.execute(
        """
        SELECT account_id, month FROM (
            SELECT DISTINCT account_id, date_trunc('month', bucket_start, 'UTC') AS month
              FROM usage_rollups_daily WHERE bucket_start >= %s AND bucket_start < %s
            EXCEPT SELECT account_id, period_start FROM invoices
        ) open ORDER BY month, account_id
        """,
        (start, to_at),
    ).fetchall()
    if unbilled:
        listed = ", ".join(f"{account} {month:%Y-%m}" for account, month in unbilled[:5])
        more = f" and {len(unbilled) - 5} more" if len(unbilled) > 5 else ""
        raise ArchiveError(
            f"{name} holds usage of {len(unbilled)} account-months without a finalized invoice ({listed}{more}): "
            "finalize them first (`spanmeter invoice --account A --period YYYY-MM --finalize`), so that nothing "
            "billable leaves the ledger unbilled"
        )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_back(path: Path) -> tuple[str, int]:
    """SHA-256 of the file's bytes, and the rows (lines) of its decompressed COPY text."""
    digest = hashlib.sha256()
    with path.open("rb") as raw:
        for chunk in iter(lambda: raw.read(_CHUNK), b""):
            digest.update(chunk)
    rows = 0
    with gzip.open(path, "rb") as text:
        for chunk in iter(lambda: text.read(_CHUNK), b""):
            rows += chunk.count(b"\n")
    return digest.hexdigest(), rows


def _export(conn: psycopg.Connection, name: str, columns: list[str], path: Path) -> int:
    """COPY the partition's rows, in key order, into ``path`` (gzip, mtime 0: the same rows give the same
    bytes); returns the rows written."""
    temporary = path.with_name(path.name + ".partial")
    rows = 0
    cols = ", ".join(columns)
    query = f'COPY (SELECT {cols} FROM ONLY "{name}" ORDER BY occurred_at, idempotency_key) TO STDOUT'
    with temporary.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
        with conn.cursor().copy(query) as copy:
            for data in copy:
                out.write(data)
                rows += bytes(data).count(b"\n")
        out.flush()
    with temporary.open("rb") as raw:
        os.fsync(raw.fileno())
    temporary.replace(path)
    _fsync_dir(path.parent)
    return rows


def _write_manifest(path: Path, manifest: dict) -> None:
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(manifest, indent=2) + "\n")
    with temporary.open("rb") as raw:
        os.fsync(raw.fileno())
    temporary.replace(path)
    _fsync_dir(path.parent)


def archive(
    conn: psycopg.Connection,
    before: datetime,
    directory: Path,
    *,
    max_span_age_seconds: int,
    max_clock_skew_seconds: int,
    now: datetime | None = None,
    by: str | None = None,
) -> list[ArchivedPartition]:
    """Archive every partition ending on or before ``before``, oldest first; see the module's text. Stops at
    the first partition that may not be archived (:class:`ArchiveError`), after committing the earlier ones."""
    now = now or datetime.now(UTC)
    window = timedelta(seconds=max_span_age_seconds + max_clock_skew_seconds)
    directory.mkdir(parents=True, exist_ok=True)
    revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    conn.commit()
    done: list[ArchivedPartition] = []
    for part in list_partitions(conn):
        conn.commit()
        if part.to_at > before:
            break
        with conn.transaction():
            conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.Identifier(part.name)))
            _check_closed(conn, part.name, part.from_at, part.to_at, now, window)
            columns = _columns(conn)
            data_file = directory / f"{part.name}.copy.gz"
            exported = _export(conn, part.name, columns, data_file)
            counted = conn.execute(f'SELECT count(*) FROM ONLY "{part.name}"').fetchone()[0]
            sha256, read_rows = _read_back(data_file)
            if not exported == counted == read_rows:
                raise ArchiveError(
                    f"{part.name}: exported {exported} rows, the table holds {counted}, the file reads back "
                    f"{read_rows}: nothing was detached; check the disk at {directory} and retry"
                )
            manifest = directory / f"{part.name}.json"
            _write_manifest(
                manifest,
                {
                    "format": ARCHIVE_FORMAT,
                    "partition": part.name,
                    "from": part.from_at.isoformat() if part.from_at else None,
                    "to": part.to_at.isoformat(),
                    "rows": counted,
                    "sha256": sha256,
                    "data_file": data_file.name,
                    "columns": columns,
                    "schema_revision": revision,
                    "exported_at": now.isoformat(),
                    "exported_by": by or getpass.getuser(),
                },
            )
            # from here on, briefly: the months covered change (writers wait for the lock, then see it), and
            # DETACH waits for the ingest transactions in flight, holding new ones meanwhile; never for long
            conn.execute("SET LOCAL lock_timeout = '3s'")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK_ID,))
            conn.execute(
                "INSERT INTO usage_partition_archives (action, partition_name, from_at, to_at, row_count, sha256,"
                " file_name, columns) VALUES ('archived', %s, coalesce(%s, '-infinity'::timestamptz), %s, %s, %s,"
                " %s, %s)",
                (part.name, part.from_at, part.to_at, counted, sha256, data_file.name, columns),
            )
            conn.execute("DELETE FROM usage_event_partitions WHERE partition_name = %s", (part.name,))
            conn.execute("SET LOCAL spanmeter.archive = 'on'")  # the detach guard lets this one through
            conn.execute(sql.SQL("ALTER TABLE usage_events DETACH PARTITION {}").format(sql.Identifier(part.name)))
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(part.name)))
        done.append(ArchivedPartition(part.name, part.from_at, part.to_at, counted, sha256, data_file, manifest))
    return done


def read_manifest(path: Path) -> dict:
    """The manifest at ``path`` (or next to a ``.copy.gz`` data file), checked for the fields restore needs."""
    if path.name.endswith(".copy.gz"):
        path = path.with_name(path.name[: -len(".copy.gz")] + ".json")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"cannot read the archive manifest {path}: {exc}") from None
    missing = [k for k in ("format", "partition", "to", "rows", "sha256", "data_file", "columns") if k not in manifest]
    if manifest.get("format") != ARCHIVE_FORMAT or missing:
        raise ArchiveError(f"{path} is not a spanmeter ledger archive manifest ({ARCHIVE_FORMAT}; missing {missing})")
    manifest["_path"] = str(path)
    return manifest


def _decompressed(path: Path) -> Iterator[bytes]:
    with gzip.open(path, "rb") as text:
        yield from iter(lambda: text.read(_CHUNK), b"")


def restore(conn: psycopg.Connection, manifest_path: Path) -> ArchivedPartition:
    """Bring an archived partition back (see the module's text); returns what was restored.

    The manifest only says which file and which partition: the bounds, the columns (in order), the checksum
    and the row count are the ledger's own record of the archive (``usage_partition_archives``), which the
    file must match. The rows are loaded into a new table with its indexes, trigger and bound check first,
    then attached under the partition lock (a moment: writers wait, then see the month again)."""
    manifest = read_manifest(manifest_path)
    name = manifest["partition"]
    if not isinstance(name, str) or not LEDGER_PARTITION.match(name):
        raise ArchiveError(f"{manifest['_path']}: {name!r} is not the name of a ledger partition")
    record = conn.execute(
        "SELECT action, sha256, row_count, CASE WHEN isfinite(from_at) THEN from_at END, to_at, columns "
        "FROM usage_partition_archives WHERE partition_name = %s ORDER BY archive_id DESC LIMIT 1",
        (name,),
    ).fetchone()
    conn.commit()
    if record is None or record[0] != "archived":
        raise ArchiveError(f"{name} is not archived in this ledger (usage_partition_archives): nothing to restore")
    _action, recorded_sha256, rows, from_at, to_at, columns = record
    if list(manifest["columns"]) != list(columns) or manifest["rows"] != rows or manifest["sha256"] != recorded_sha256:
        raise ArchiveError(
            f"{manifest['_path']} does not describe the archive this ledger recorded for {name} (sha256 "
            f"{recorded_sha256[:12]}…, {rows} rows, its columns): nothing was restored"
        )
    data_file = Path(manifest["_path"]).with_name(Path(manifest["data_file"]).name)
    try:
        sha256, read_rows = _read_back(data_file)
    except OSError as exc:
        raise ArchiveError(f"cannot read the archive data file {data_file}: {exc}") from None
    if sha256 != recorded_sha256 or read_rows != rows:
        raise ArchiveError(
            f"{data_file} does not match its manifest (sha256 {sha256[:12]}… vs {recorded_sha256[:12]}…, rows "
            f"{read_rows} vs {rows}): it is damaged or another file; nothing was restored"
        )
    table = sql.Identifier(name)
    with conn.transaction():
        oldest = coverage(conn)
        if oldest.from_at is None or oldest.from_at != to_at:
            raise ArchiveError(
                f"{name} ends at {to_at:%Y-%m-%d}, but the oldest attached partition starts at "
                f"{_month(oldest.from_at)}: restore the newest archived month first"
            )
        lower = sql.Literal(from_at) if from_at is not None else sql.SQL("MINVALUE")
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE usage_events INCLUDING DEFAULTS INCLUDING INDEXES)").format(table))
        copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(table, sql.SQL(", ").join(map(sql.Identifier, columns)))
        with conn.cursor().copy(copy_sql) as copy:
            for chunk in _decompressed(data_file):
                copy.write(chunk)
        loaded = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]
        if loaded != rows:
            raise ArchiveError(f"{name}: loaded {loaded} rows, the archive holds {rows}: nothing was restored")
        # a month archived before the key registry (0018) has keys it does not hold yet; later ones are still there
        conn.execute(
            sql.SQL(
                "INSERT INTO usage_event_keys (idempotency_key, occurred_at) SELECT idempotency_key, occurred_at"
                " FROM {} ON CONFLICT DO NOTHING"
            ).format(table)
        )
        bound = sql.SQL("occurred_at < {}").format(sql.Literal(to_at))
        if from_at is not None:
            bound = sql.SQL("occurred_at >= {} AND {}").format(sql.Literal(from_at), bound)
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
                table, sql.Identifier(f"{name}_bounds"), bound
            )
        )
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER {} BEFORE UPDATE OR DELETE OR TRUNCATE ON {} FOR EACH STATEMENT "
                "EXECUTE FUNCTION spanmeter_refuse_ledger_change()"
            ).format(sql.Identifier(f"{name}_append_only"), table)
        )
        conn.execute("SET LOCAL lock_timeout = '3s'")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK_ID,))
        conn.execute(
            sql.SQL("ALTER TABLE usage_events ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                table, lower, sql.Literal(to_at)
            )
        )
        conn.execute(
            "INSERT INTO usage_event_partitions (partition_name, from_at, to_at) "
            "VALUES (%s, coalesce(%s, '-infinity'::timestamptz), %s)",
            (name, from_at, to_at),
        )
        conn.execute(
            "INSERT INTO usage_partition_archives (action, partition_name, from_at, to_at, row_count, sha256,"
            " file_name, columns) VALUES ('restored', %s, coalesce(%s, '-infinity'::timestamptz), %s, %s, %s, %s, %s)",
            (name, from_at, to_at, rows, sha256, data_file.name, columns),
        )
    return ArchivedPartition(name, from_at, to_at, rows, sha256, data_file, Path(manifest["_path"]))
