"""Intraday-data collector (every 15 minutes in session): appends the session's completed bars.

Each run writes every bar of the slot's session (``ctx.session``: the exchange's own hours that
day, a special session's minutes included) that has completed by the slot and is not stored yet,
so a missed run is made good by the next one. On a day the exchange is closed there is no session
and nothing is written. args: ``indices``, ``interval_minutes`` (15), ``db``, ``provider``.
"""

from __future__ import annotations

from hedge_jobs import market, store


def run(ctx) -> dict:
    args = ctx.args
    indices = args.get("indices", ["NIFTY", "BANKNIFTY"])
    minutes = int(args.get("interval_minutes", 15))
    day = ctx.scheduled_at.date().isoformat()
    session = ctx.session
    if session is None:
        ctx.log.info("%s: the exchange is closed (%s): no bars", day, ctx.exchange or "no session")
        return {"day": day, "session": None, "bars_written": {i: 0 for i in indices}}
    provider = market.load_provider(args)
    conn = store.connect(args.get("db", "data/market.sqlite3"))
    written = {}
    try:
        with conn:
            for index in indices:
                bars = provider.bars(index, session, minutes, until=ctx.scheduled_at)
                before = conn.total_changes
                conn.executemany(
                    "INSERT OR IGNORE INTO intraday_bars"
                    " (index_name, interval_min, bar_start, open, high, low, close, volume)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(b.index, minutes, b.start.isoformat(), b.open, b.high, b.low, b.close, b.volume) for b in bars],
                )
                written[index] = conn.total_changes - before
                ctx.log.info("%s: %d new %d-minute bars (%d completed in the session)", index, written[index], minutes, len(bars))
    finally:
        conn.close()
    return {
        "day": day,
        "session": {"open": session.open.isoformat(), "close": session.close.isoformat(), "kind": session.kind},
        "bars_written": written,
    }
