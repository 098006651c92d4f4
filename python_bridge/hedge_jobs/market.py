"""Market data providers.

A provider answers three questions for an index: the spot price at an instant, the option chain at
an instant, and the bars of a session. Every question comes with the exchange's session (the run
context's ``ctx.session``): open and close as aware datetimes, so a special session (Muhurat
trading) or an early close has its own minutes, and a closed day has none.

The default, :class:`SyntheticMarket`, is deterministic: the same index and instant always give
the same numbers, so runs are reproducible and tests can check them. Its chains are free of
static arbitrage (one implied volatility per strike for calls and puts, so put–call parity holds;
calls fall and are convex in strike, puts rise and are convex) and its open interest evolves
smoothly from slot to slot. A real feed plugs in by naming it in a job's ``args``::

    args = { provider = "my_feeds.nse:NseProvider", provider_args = { region = "ap-south-1" } }

The class is instantiated with ``provider_args`` as keyword arguments and must offer the methods of
:class:`Provider`. Credentials belong in the job's environment, never in the config: an
``env_file`` (see the README's Secrets), read by the provider from ``os.environ``.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib
import math
import random
from dataclasses import dataclass, field

IST = dt.timezone(dt.timedelta(hours=5, minutes=30), "IST")
SESSION_OPEN = dt.time(9, 15)
SESSION_CLOSE = dt.time(15, 30)
SESSION_MINUTES = 375  # 09:15-15:30
RISK_FREE = 0.065
#: NSE's price tick for options.
TICK = 0.05


@dataclass(frozen=True)
class Hours:
    """A session's open and close (aware datetimes). ``hedge_bridge.Session`` is one; so is
    :func:`regular_hours` of a date, for use without the scheduler."""

    open: dt.datetime
    close: dt.datetime


def regular_hours(day: dt.date) -> Hours:
    """NSE's regular session on ``day`` (holidays not considered)."""
    return Hours(dt.datetime.combine(day, SESSION_OPEN, IST), dt.datetime.combine(day, SESSION_CLOSE, IST))


def session_minutes(session) -> int:
    return max(int((session.close - session.open).total_seconds() // 60), 0)


@dataclass(frozen=True)
class IndexSpec:
    base: float
    strike_step: int
    vol: float
    lot: int


INDICES = {
    "NIFTY": IndexSpec(24000.0, 50, 0.13, 75),
    "BANKNIFTY": IndexSpec(52000.0, 100, 0.16, 35),
    "FINNIFTY": IndexSpec(23500.0, 50, 0.14, 65),
    "MIDCPNIFTY": IndexSpec(12500.0, 25, 0.18, 140),
}


@dataclass
class Quote:
    strike: float
    option_type: str  # "CE" or "PE"
    last_price: float
    oi: int
    volume: int
    iv: float


@dataclass
class Chain:
    index: str
    at: dt.datetime
    spot: float
    expiry: dt.date
    quotes: list[Quote] = field(default_factory=list)


@dataclass
class Bar:
    index: str
    start: dt.datetime
    open: float
    high: float
    low: float
    close: float
    volume: int


class Provider:
    """The interface every provider offers. ``session`` is the exchange's session the instant
    belongs to (``open``/``close`` aware datetimes); ``at`` lies within it."""

    name = "provider"

    def spot(self, index: str, at: dt.datetime, session=None) -> float:
        raise NotImplementedError

    def chain(self, index: str, at: dt.datetime, strikes_each_side: int = 10, session=None) -> Chain:
        raise NotImplementedError

    def bars(self, index: str, session, minutes: int = 15, until: dt.datetime | None = None) -> list[Bar]:
        raise NotImplementedError


def _rng(*key) -> random.Random:
    digest = hashlib.sha256("|".join(str(k) for k in key).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _norm_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def black_scholes(spot: float, strike: float, years: float, vol: float, rate: float, option_type: str) -> float:
    """The Black–Scholes price of a European option."""
    years = max(years, 1e-6)
    sd = vol * math.sqrt(years)
    d1 = (math.log(spot / strike) + (rate + 0.5 * vol * vol) * years) / sd
    d2 = d1 - sd
    if option_type == "CE":
        return spot * _norm_cdf(d1) - strike * math.exp(-rate * years) * _norm_cdf(d2)
    return strike * math.exp(-rate * years) * _norm_cdf(-d2) - spot * _norm_cdf(-d1)


def _spec(index: str) -> IndexSpec:
    return INDICES.get(index.upper(), IndexSpec(10000.0, 50, 0.15, 50))


def _minute_of_session(at: dt.datetime, session) -> int:
    """Whole minutes since the open, clamped to the session."""
    minute = int((at - session.open).total_seconds() // 60)
    return min(max(minute, 0), session_minutes(session))


def _smooth(seed, *key) -> float:
    """A smooth function of time for ``key``: the sum of two slow waves with seeded phases, in
    about [-1, 1]. Its value moves by under 1 % of its range in 3 minutes."""
    rng = _rng(seed, *key, "waves")
    phases = [rng.uniform(0, 2 * math.pi) for _ in range(2)]
    return lambda minutes: 0.6 * math.sin(2 * math.pi * minutes / 390 + phases[0]) + 0.4 * math.sin(
        2 * math.pi * minutes / 170 + phases[1]
    )


#: Minutes are counted from here for the slow waves of open interest.
_EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


class SyntheticMarket(Provider):
    """A deterministic market: a smooth daily level plus a seeded intraday random walk."""

    name = "synthetic"

    def __init__(self, seed: int | str = 0) -> None:
        self.seed = seed

    @functools.lru_cache(maxsize=64)
    def _path(self, index: str, open_: dt.datetime, minutes: int) -> tuple[float, ...]:
        """The index level at each minute of the session that opens at ``open_``."""
        spec = _spec(index)
        day = open_.astimezone(IST).date()
        days = (day - dt.date(2024, 1, 1)).days
        level = spec.base * math.exp(0.06 * math.sin(days / 45.0) + 0.02 * math.sin(days / 7.3))
        level *= math.exp(0.006 * _rng(self.seed, index, day, "open").gauss(0, 1))
        sigma_minute = spec.vol / math.sqrt(252 * SESSION_MINUTES)
        rng = _rng(self.seed, index, open_.isoformat(), "path")
        path = [level]
        for _ in range(minutes):
            path.append(path[-1] * math.exp(sigma_minute * rng.gauss(0, 1)))
        return tuple(path)

    def _session_path(self, index: str, session) -> tuple[float, ...]:
        return self._path(index.upper(), session.open, session_minutes(session))

    def spot(self, index: str, at: dt.datetime, session=None) -> float:
        session = session or regular_hours(at.astimezone(IST).date())
        return round(self._session_path(index, session)[_minute_of_session(at, session)], 2)

    def expiry(self, index: str, day: dt.date) -> dt.date:
        """The nearest expiry on or after ``day``, by NSE's rules: index options expire on
        Thursday, on Tuesday from 2025-09-01; only NIFTY keeps weekly expiries (the others went
        monthly, expiring on the month's last such weekday, from 2024-11-20). Holiday shifts are
        not modelled."""
        weekday = 1 if day >= dt.date(2025, 9, 1) else 3
        if index.upper() == "NIFTY" or day < dt.date(2024, 11, 20):
            return day + dt.timedelta(days=(weekday - day.weekday()) % 7)
        year, month = day.year, day.month
        while True:
            first_next = dt.date(year + (month == 12), month % 12 + 1, 1)
            last = first_next - dt.timedelta(days=1)
            last -= dt.timedelta(days=(last.weekday() - weekday) % 7)
            if last >= day:
                return last
            year, month = first_next.year, first_next.month

    def open_interest(self, index: str, expiry: dt.date, strike: float, option_type: str, at: dt.datetime, anchor: float) -> int:
        """Open interest of one contract at ``at``: clustered around ``anchor`` (the session's
        opening level: positions are not rebuilt each time spot ticks), puts written below it,
        calls above, building up towards expiry and moving smoothly with time, so each snapshot
        is the one before plus a small move (about 1 % in 3 minutes)."""
        spot = anchor
        spec = _spec(index)
        minutes = (at - _EPOCH).total_seconds() / 60.0
        wave = _smooth(self.seed, index, expiry, strike, option_type)(minutes)
        # The side that is out of the money carries more: a smooth step, not a jump, as spot
        # crosses the strike.
        side = math.tanh((strike - spot) / spec.strike_step)
        bias = 1.0 + 0.25 * (side if option_type == "CE" else -side)
        weight = math.exp(-((strike - spot) / (6 * spec.strike_step)) ** 2)
        days_left = max((dt.datetime.combine(expiry, SESSION_CLOSE, IST) - at).total_seconds() / 86400.0, 0.0)
        build_up = 1.0 + 1.5 / (1.0 + days_left / 3.0)
        base = spec.lot * 1600.0 * (0.85 + 0.3 * _rng(self.seed, index, expiry, strike, option_type, "oi").random())
        return int(base * weight * bias * build_up * (1.0 + 0.12 * wave)) + spec.lot * 10

    def chain(self, index: str, at: dt.datetime, strikes_each_side: int = 10, session=None) -> Chain:
        """The chain at ``at`` (within ``session``). One implied volatility per strike (a smooth
        smile) for calls and puts alike: put–call parity holds and prices carry no static
        arbitrage across strikes, up to the tick they are rounded to."""
        index = index.upper()
        spec = _spec(index)
        session = session or regular_hours(at.astimezone(IST).date())
        spot = self.spot(index, at, session)
        anchor = self._session_path(index, session)[0]
        local = at.astimezone(IST)
        expiry = self.expiry(index, local.date())
        expires_at = dt.datetime.combine(expiry, SESSION_CLOSE, IST)
        years = max((expires_at - local).total_seconds(), 3600.0) / (365.0 * 86400.0)
        forward = spot * math.exp(RISK_FREE * years)
        atm = round(spot / spec.strike_step) * spec.strike_step
        minute = _minute_of_session(at, session)
        day_fraction = max(minute, 1) / max(session_minutes(session), 1)
        # The level of the smile drifts slowly through the day; its shape is fixed.
        level = spec.vol * (1.0 + 0.04 * _smooth(self.seed, index, "iv")((at - _EPOCH).total_seconds() / 60.0))
        chain = Chain(index=index, at=at, spot=spot, expiry=expiry)
        for i in range(-strikes_each_side, strikes_each_side + 1):
            strike = float(atm + i * spec.strike_step)
            moneyness = math.log(strike / forward)
            iv = level * (1.0 + 1.5 * moneyness * moneyness - 0.3 * moneyness)
            call = black_scholes(spot, strike, years, iv, RISK_FREE, "CE")
            # Parity, exactly: the put from the call.
            put = call - spot + strike * math.exp(-RISK_FREE * years)
            for option_type, price in (("CE", call), ("PE", put)):
                oi = self.open_interest(index, expiry, strike, option_type, at, anchor)
                volume = int(oi * 0.9 * day_fraction)
                chain.quotes.append(Quote(strike, option_type, _to_tick(price), oi, volume, round(iv, 4)))
        return chain

    def bars(self, index: str, session, minutes: int = 15, until: dt.datetime | None = None) -> list[Bar]:
        """The ``minutes``-long bars of ``session`` that have completed by ``until`` (all of
        them without it); a last bar cut short by the close ends at the close."""
        index = index.upper()
        path = self._session_path(index, session)
        length = session_minutes(session)
        last_minute = length
        if until is not None:
            last_minute = min(int((until - session.open).total_seconds() // 60), length)
        out = []
        for start in range(0, length, minutes):
            end = min(start + minutes, length)
            if end > last_minute:
                break
            points = path[start : end + 1]
            volume = int(_rng(self.seed, index, session.open.isoformat(), start, "volume").uniform(2e5, 9e5) * (end - start))
            out.append(
                Bar(
                    index=index,
                    start=session.open.astimezone(IST) + dt.timedelta(minutes=start),
                    open=round(points[0], 2),
                    high=round(max(points), 2),
                    low=round(min(points), 2),
                    close=round(points[-1], 2),
                    volume=volume,
                )
            )
        return out


def _to_tick(price: float) -> float:
    """A price on the exchange's tick, at least one tick."""
    return max(round(round(price / TICK) * TICK, 2), TICK)


def load_provider(args: dict) -> Provider:
    """The provider a job's ``args`` name: ``"synthetic"`` (default) or ``"module:Class"``."""
    name = args.get("provider", "synthetic")
    options = dict(args.get("provider_args") or {})
    if name == "synthetic":
        return SyntheticMarket(**options)
    module_name, sep, class_name = name.partition(":")
    if not sep:
        raise ValueError(f"provider {name!r} is neither 'synthetic' nor 'module:Class'")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**options)
