"""Intraday-data collector (every 15 minutes in session): appends the day's completed bars.

Each run writes every bar of the slot's session that has completed by the slot time and is not
stored yet, so a missed run is backfilled by the next one. Before the day's first bar completes
(a manual run at night or on a weekend) it collects the previous weekday's session instead. args: ``indices``, ``interval_minutes`` (15),
``db``, ``provider``.
"""

from __future__ import annotations

import datetime as dt

from hedge_jobs import market, store


def session_day(at: dt.datetime, minutes: int) -> dt.date:
    """The day whose bars a run at ``at`` collects: today once a bar has completed, else the
    previous weekday."""
    local = at.astimezone(market.IST)
    first_bar_done = dt.datetime.combine(local.date(), market.SESSION_OPEN, market.IST) + dt.timedelta(minutes=minutes)
    day = local.date()
    if local < first_bar_done or day.weekday() >= 5:
        day -= dt.timedelta(days=1)
        while day.weekday() >= 5:
            day -= dt.timedelta(days=1)
    return day


def run(ctx) -> dict:
    args = ctx.args
    indices = args.get("indices", ["NIFTY", "BANKNIFTY"])
    minutes = int(args.get("interval_minutes", 15))
    provider = market.load_provider(args)
    conn = store.connect(args.get("db", "data/market.sqlite3"))
    day = session_day(ctx.scheduled_at, minutes)
    written = {}
    try:
        with conn:
            for index in indices:
                bars = provider.bars(index, day, minutes, until=ctx.scheduled_at if day == ctx.scheduled_at.astimezone(market.IST).date() else None)
                before = conn.total_changes
                conn.executemany(
                    "INSERT OR IGNORE INTO intraday_bars"
                    " (index_name, interval_min, bar_start, open, high, low, close, volume)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(b.index, minutes, b.start.isoformat(), b.open, b.high, b.low, b.close, b.volume) for b in bars],
                )
                written[index] = conn.total_changes - before
                ctx.log.info("%s: %d new %d-minute bars (%d completed today)", index, written[index], minutes, len(bars))
    finally:
        conn.close()
    return {"day": day.isoformat(), "bars_written": written}
