"""The market database: where the jobs keep chains, bars and analyses (SQLite, WAL).

Rows are keyed by index and slot time, so running a slot twice never duplicates it.
"""

from __future__ import annotations

import os
import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS chain_snapshots (
    id          INTEGER PRIMARY KEY,
    index_name  TEXT NOT NULL,
    snapshot_at TEXT NOT NULL,
    spot        REAL NOT NULL,
    expiry      TEXT NOT NULL,
    provider    TEXT NOT NULL,
    run_id      INTEGER,
    market      TEXT NOT NULL DEFAULT 'open',  -- 'closed': priced at the last close
    priced_at   TEXT,
    UNIQUE (index_name, snapshot_at)
);
CREATE TABLE IF NOT EXISTS chain_quotes (
    snapshot_id INTEGER NOT NULL REFERENCES chain_snapshots (id) ON DELETE CASCADE,
    strike      REAL NOT NULL,
    option_type TEXT NOT NULL CHECK (option_type IN ('CE', 'PE')),
    last_price  REAL NOT NULL,
    oi          INTEGER NOT NULL,
    volume      INTEGER NOT NULL,
    iv          REAL NOT NULL,
    PRIMARY KEY (snapshot_id, strike, option_type)
);
CREATE TABLE IF NOT EXISTS intraday_bars (
    index_name  TEXT NOT NULL,
    interval_min INTEGER NOT NULL,
    bar_start   TEXT NOT NULL,
    open        REAL NOT NULL,
    high        REAL NOT NULL,
    low         REAL NOT NULL,
    close       REAL NOT NULL,
    volume      INTEGER NOT NULL,
    PRIMARY KEY (index_name, interval_min, bar_start)
);
CREATE TABLE IF NOT EXISTS analysis (
    id              INTEGER PRIMARY KEY,
    index_name      TEXT NOT NULL,
    analysed_at     TEXT NOT NULL,
    snapshot_id     INTEGER REFERENCES chain_snapshots (id),
    spot            REAL NOT NULL,
    pcr             REAL NOT NULL,
    max_pain        REAL NOT NULL,
    atm_iv          REAL NOT NULL,
    signal          TEXT NOT NULL,
    suggested_trade TEXT NOT NULL,
    run_id          INTEGER,
    UNIQUE (index_name, analysed_at)
);
"""


def connect(path: str) -> sqlite3.Connection:
    """Opens (creating if needed) the market database at ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executescript(SCHEMA)
    # A database from before the columns were added.
    have = {row[1] for row in conn.execute("PRAGMA table_info(chain_snapshots)")}
    for column, decl in (("market", "TEXT NOT NULL DEFAULT 'open'"), ("priced_at", "TEXT")):
        if column not in have:
            try:
                conn.execute(f"ALTER TABLE chain_snapshots ADD COLUMN {column} {decl}")
            except sqlite3.OperationalError as exc:
                # Two jobs of the same slot both found it missing: the other one added it.
                if "duplicate column" not in str(exc):
                    raise
    return conn


def save_chain(
    conn: sqlite3.Connection,
    chain,
    provider: str,
    run_id: int | None,
    market_state: str = "open",
    priced_at=None,
) -> int:
    """Stores one chain snapshot; returns its id. A slot already stored is kept as it is (the
    analysis and the collector may both take the snapshot of the same slot), so rows that refer
    to it stay valid."""
    at = chain.at.isoformat()
    # Both jobs fire at the same instant: the insert itself decides who stores the slot (a
    # look-then-insert let both insert, and one failed on the unique key).
    cur = conn.execute(
        "INSERT INTO chain_snapshots (index_name, snapshot_at, spot, expiry, provider, run_id, market, priced_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (index_name, snapshot_at) DO NOTHING",
        (
            chain.index,
            at,
            chain.spot,
            chain.expiry.isoformat(),
            provider,
            run_id,
            market_state,
            (priced_at or chain.at).isoformat(),
        ),
    )
    if cur.rowcount == 0:
        row = conn.execute(
            "SELECT id FROM chain_snapshots WHERE index_name = ? AND snapshot_at = ?",
            (chain.index, at),
        ).fetchone()
        return row[0]
    snapshot_id = cur.lastrowid
    conn.executemany(
        "INSERT INTO chain_quotes (snapshot_id, strike, option_type, last_price, oi, volume, iv)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(snapshot_id, q.strike, q.option_type, q.last_price, q.oi, q.volume, q.iv) for q in chain.quotes],
    )
    return snapshot_id
