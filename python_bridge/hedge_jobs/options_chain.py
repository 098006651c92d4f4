"""Options-chain collector (every 3 minutes in session): one chain snapshot per index.

In session, the chain is priced at the slot. Outside one (a manual run at night, on a weekend or
a holiday) it is priced at the last session's close and stored labelled ``closed``, with the
instant it is priced at: never a made-up open. args: ``indices`` (default NIFTY, BANKNIFTY),
``strikes_each_side`` (10), ``db`` (``data/market.sqlite3``, relative to the job's working
directory), ``provider``.
"""

from __future__ import annotations

from hedge_jobs import market, store


def pricing(ctx):
    """(instant priced at, its session, "open" or "closed") for a run: the slot itself while the
    exchange is in session, else the last close before it."""
    session = ctx.session
    if session is not None and ctx.scheduled_at in session:
        return ctx.scheduled_at, session, "open"
    last = ctx.last_session
    if last is not None and last.close <= ctx.scheduled_at:
        return last.close, last, "closed"
    # Before any session this context knows of: the regular hours of the slot's day, at the open.
    hours = market.regular_hours(ctx.scheduled_at.date())
    return hours.open, hours, "closed"


def run(ctx) -> dict:
    args = ctx.args
    indices = args.get("indices", ["NIFTY", "BANKNIFTY"])
    width = int(args.get("strikes_each_side", 10))
    provider = market.load_provider(args)
    priced_at, session, state = pricing(ctx)
    conn = store.connect(args.get("db", "data/market.sqlite3"))
    summary = {}
    try:
        with conn:
            for index in indices:
                chain = provider.chain(index, priced_at, width, session)
                chain.at = ctx.scheduled_at
                store.save_chain(conn, chain, provider.name, ctx.run_id, market_state=state, priced_at=priced_at)
                summary[index] = {"spot": chain.spot, "expiry": chain.expiry.isoformat(), "quotes": len(chain.quotes)}
                ctx.log.info(
                    "%s chain for %s (%s, priced at %s): spot %.2f, %d quotes",
                    index, ctx.scheduled_at.isoformat(), state, priced_at.isoformat(), chain.spot, len(chain.quotes),
                )
    finally:
        conn.close()
    return {"snapshot_at": ctx.scheduled_at.isoformat(), "market": state, "priced_at": priced_at.isoformat(), "indices": summary}
