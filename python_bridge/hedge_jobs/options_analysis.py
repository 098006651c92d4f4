"""Options analysis (every 15 minutes in session): PCR, max pain, ATM IV, a signal and a trade.

Reads the newest chain snapshot of each index taken at or before the slot (at most ``max_age_minutes``
old, default 15); when there is none it takes a fresh snapshot itself, so the analysis never runs on
stale data. args: ``indices``, ``db``, ``provider``, ``max_age_minutes``, ``pcr_bullish`` (1.2),
``pcr_bearish`` (0.8).
"""

from __future__ import annotations

import datetime as dt

from hedge_jobs import market, store
from hedge_jobs.options_chain import pricing


def pcr(quotes) -> float:
    """Put–call ratio by open interest."""
    calls = sum(q["oi"] for q in quotes if q["option_type"] == "CE")
    puts = sum(q["oi"] for q in quotes if q["option_type"] == "PE")
    return puts / calls if calls else 0.0


def max_pain(quotes) -> float:
    """The expiry price at which option holders, in total, would receive the least."""
    strikes = sorted({q["strike"] for q in quotes})

    def payout(settle: float) -> float:
        total = 0.0
        for q in quotes:
            if q["option_type"] == "CE":
                total += q["oi"] * max(0.0, settle - q["strike"])
            else:
                total += q["oi"] * max(0.0, q["strike"] - settle)
        return total

    return min(strikes, key=payout)


def atm_iv(quotes, spot: float) -> float:
    atm = min({q["strike"] for q in quotes}, key=lambda k: abs(k - spot))
    ivs = [q["iv"] for q in quotes if q["strike"] == atm]
    return sum(ivs) / len(ivs)


def signal(spot: float, ratio: float, pain: float, bullish: float, bearish: float) -> str:
    if ratio >= bullish and spot >= pain:
        return "BULLISH"
    if ratio <= bearish and spot <= pain:
        return "BEARISH"
    return "NEUTRAL"


def suggest(index: str, sig: str, spot: float, step: int, expiry: str, iv: float) -> str:
    atm = round(spot / step) * step
    if sig == "BULLISH":
        return f"BUY {index} {expiry} {atm} CE / SELL {atm + 4 * step} CE (bull call spread)"
    if sig == "BEARISH":
        return f"BUY {index} {expiry} {atm} PE / SELL {atm - 4 * step} PE (bear put spread)"
    if iv >= 0.15:
        return f"SELL {index} {expiry} {atm} straddle, BUY {atm - 6 * step} PE / {atm + 6 * step} CE wings (iron fly)"
    return "NO TRADE"


def _latest_snapshot(conn, index: str, at: dt.datetime, max_age: dt.timedelta, state: str):
    rows = conn.execute(
        "SELECT id, snapshot_at, spot, expiry, market FROM chain_snapshots WHERE index_name = ?"
        " ORDER BY snapshot_at DESC LIMIT 50",
        (index,),
    ).fetchall()
    for snapshot_id, snapshot_at, spot, expiry, market_state in rows:
        taken = dt.datetime.fromisoformat(snapshot_at)
        if taken <= at and at - taken <= max_age and market_state == state:
            return snapshot_id, spot, expiry
    return None


def run(ctx) -> dict:
    args = ctx.args
    indices = args.get("indices", ["NIFTY", "BANKNIFTY"])
    max_age = dt.timedelta(minutes=float(args.get("max_age_minutes", 15)))
    bullish = float(args.get("pcr_bullish", 1.2))
    bearish = float(args.get("pcr_bearish", 0.8))
    provider = market.load_provider(args)
    conn = store.connect(args.get("db", "data/market.sqlite3"))
    conn.row_factory = None
    priced_at, session, state = pricing(ctx)
    out = {}
    try:
        with conn:
            for index in indices:
                found = _latest_snapshot(conn, index, ctx.scheduled_at, max_age, state)
                if found is None:
                    chain = provider.chain(index, priced_at, 10, session)
                    chain.at = ctx.scheduled_at
                    snapshot_id = store.save_chain(
                        conn, chain, provider.name, ctx.run_id, market_state=state, priced_at=priced_at
                    )
                    spot, expiry = chain.spot, chain.expiry.isoformat()
                    ctx.log.info("%s: no recent chain, took a snapshot (id %d)", index, snapshot_id)
                else:
                    snapshot_id, spot, expiry = found
                quotes = [
                    {"strike": s, "option_type": t, "oi": oi, "iv": iv}
                    for s, t, oi, iv in conn.execute(
                        "SELECT strike, option_type, oi, iv FROM chain_quotes WHERE snapshot_id = ?",
                        (snapshot_id,),
                    )
                ]
                ratio = pcr(quotes)
                pain = max_pain(quotes)
                iv = atm_iv(quotes, spot)
                sig = signal(spot, ratio, pain, bullish, bearish)
                step = market.INDICES.get(index.upper(), market.IndexSpec(0, 50, 0, 0)).strike_step
                trade = suggest(index, sig, spot, step, expiry, iv)
                conn.execute(
                    "INSERT OR REPLACE INTO analysis (index_name, analysed_at, snapshot_id, spot, pcr,"
                    " max_pain, atm_iv, signal, suggested_trade, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (index, ctx.scheduled_at.isoformat(), snapshot_id, spot, ratio, pain, iv, sig, trade, ctx.run_id),
                )
                out[index] = {
                    "spot": spot,
                    "pcr": round(ratio, 3),
                    "max_pain": pain,
                    "atm_iv": round(iv, 4),
                    "signal": sig,
                    "suggested_trade": trade,
                }
                ctx.log.info("%s: PCR %.2f, max pain %.0f, ATM IV %.1f%% -> %s: %s", index, ratio, pain, iv * 100, sig, trade)
    finally:
        conn.close()
    return {"analysed_at": ctx.scheduled_at.isoformat(), "market": state, "priced_at": priced_at.isoformat(), "indices": out}
