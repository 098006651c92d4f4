"""The jobs of the trading research system, run by hedge-scheduler.

Each module has a ``run(ctx)`` entry point (``hedge_jobs.options_chain:run`` and so on). They use
the standard library only, so the default configuration works on a fresh machine without network:
market data comes from a provider (see :mod:`hedge_jobs.market`), by default a deterministic
synthetic market, and is stored in a SQLite market database (see :mod:`hedge_jobs.store`).
"""
