"""Options-chain collector (every 3 minutes in session): one chain snapshot per index.

args: ``indices`` (default NIFTY, BANKNIFTY), ``strikes_each_side`` (10), ``db``
(``data/market.sqlite3``, relative to the job's working directory), ``provider``.
"""

from __future__ import annotations

from hedge_jobs import market, store


def run(ctx) -> dict:
    args = ctx.args
    indices = args.get("indices", ["NIFTY", "BANKNIFTY"])
    width = int(args.get("strikes_each_side", 10))
    provider = market.load_provider(args)
    conn = store.connect(args.get("db", "data/market.sqlite3"))
    summary = {}
    try:
        with conn:
            for index in indices:
                chain = provider.chain(index, ctx.scheduled_at, width)
                store.save_chain(conn, chain, provider.name, ctx.run_id)
                summary[index] = {"spot": chain.spot, "expiry": chain.expiry.isoformat(), "quotes": len(chain.quotes)}
                ctx.log.info("%s chain at %s: spot %.2f, %d quotes", index, ctx.scheduled_at.isoformat(), chain.spot, len(chain.quotes))
    finally:
        conn.close()
    return {"snapshot_at": ctx.scheduled_at.isoformat(), "indices": summary}
