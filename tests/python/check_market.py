"""The shipped synthetic market keeps its promises: no static arbitrage across strikes and put–call
parity in every chain, and open interest that moves a little from one 3-minute slot to the next.

Run by the integration tests with the real interpreter: ``python check_market.py <python_bridge>``.
Prints one JSON line of what it measured; exits 1 naming the first broken promise.
"""

import datetime as dt
import json
import math
import sys

sys.path.insert(0, sys.argv[1])

from hedge_jobs import market  # noqa: E402

TOL = market.TICK + 1e-9  # prices are rounded to the tick: one tick of slack


def check_chain(chain) -> None:
    years = max(
        (dt.datetime.combine(chain.expiry, market.SESSION_CLOSE, market.IST) - chain.at).total_seconds(), 3600.0
    ) / (365.0 * 86400.0)
    by = {(q.strike, q.option_type): q for q in chain.quotes}
    strikes = sorted({q.strike for q in chain.quotes})
    calls = [by[(k, "CE")].last_price for k in strikes]
    puts = [by[(k, "PE")].last_price for k in strikes]
    where = f"{chain.index} {chain.at.isoformat()}"
    for i in range(len(strikes) - 1):
        assert calls[i + 1] <= calls[i] + 1e-9, f"{where}: CE {strikes[i + 1]} {calls[i + 1]} above CE {strikes[i]} {calls[i]}"
        assert puts[i + 1] >= puts[i] - 1e-9, f"{where}: PE {strikes[i + 1]} {puts[i + 1]} below PE {strikes[i]} {puts[i]}"
    for i in range(1, len(strikes) - 1):
        for name, p in (("CE", calls), ("PE", puts)):
            # Equal strike steps: convex means the middle price is at most the mean of its
            # neighbours.
            assert p[i] <= (p[i - 1] + p[i + 1]) / 2 + TOL, f"{where}: {name} not convex at {strikes[i]}"
    for k, c, p in zip(strikes, calls, puts):
        parity = chain.spot - k * math.exp(-market.RISK_FREE * years)
        assert abs((c - p) - parity) <= 2 * TOL, f"{where}: parity off at {k}: {c} - {p} vs {parity:.2f}"


def main() -> int:
    m = market.SyntheticMarket()
    day = dt.date(2026, 11, 23)
    snapshots, moves, largest = 0, 0, 0.0
    pcrs = []
    while snapshots < 1000:
        if day.weekday() < 5:
            hours = market.regular_hours(day)
            previous = {}
            t = hours.open
            while t <= hours.close and snapshots < 1000:
                for index in ("NIFTY", "BANKNIFTY"):
                    chain = m.chain(index, t, 10, hours)
                    check_chain(chain)
                    snapshots += 1
                    now = {(q.strike, q.option_type): q.oi for q in chain.quotes}
                    for key, oi in now.items():
                        before = previous.get((index, key))
                        if before:
                            change = abs(oi - before) / before
                            largest = max(largest, change)
                            moves += 1
                            assert change < 0.10, f"{index} {key} OI {before} -> {oi} at {t.isoformat()}"
                    # Only the slot just before counts: a strike that left the chain and came
                    # back is compared with nothing.
                    previous = {k: v for k, v in previous.items() if k[0] != index}
                    for key, oi in now.items():
                        previous[(index, key)] = oi
                    if index == "NIFTY":
                        calls = sum(q.oi for q in chain.quotes if q.option_type == "CE")
                        puts = sum(q.oi for q in chain.quotes if q.option_type == "PE")
                        pcrs.append((day, puts / calls))
                t += dt.timedelta(minutes=3)
        day += dt.timedelta(days=1)
    # PCR over any 15 minutes (5 snapshots) moves plausibly, not 0.83 -> 1.17.
    swing = 0.0
    for i in range(len(pcrs) - 5):
        window = pcrs[i : i + 6]
        if window[0][0] == window[-1][0]:  # within one session
            values = [v for _, v in window]
            swing = max(swing, max(values) - min(values))
    print(json.dumps({"snapshots": snapshots, "oi_moves": moves, "largest_oi_move": round(largest, 4), "largest_pcr_swing_15min": round(swing, 4)}))
    assert swing < 0.1, f"PCR swings {swing:.3f} within 15 minutes"
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print(f"broken: {e}", file=sys.stderr)
        sys.exit(1)
