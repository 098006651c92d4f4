"""Market data providers.

A provider answers three questions for an index at an instant: the spot price, the option chain,
and the intraday bars of a day. The default, :class:`SyntheticMarket`, is deterministic: the same
index and instant always give the same numbers (seeded by index and time, priced with
Black–Scholes), so runs are reproducible and tests can check them. A real feed plugs in by naming
it in a job's ``args``::

    args = { provider = "my_feeds.nse:NseProvider", provider_args = { token = "..." } }

The class is instantiated with ``provider_args`` as keyword arguments and must offer the methods of
:class:`Provider`.
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
SESSION_MINUTES = 375  # 09:15-15:30
RISK_FREE = 0.065


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
    """The interface every provider offers."""

    name = "provider"

    def spot(self, index: str, at: dt.datetime) -> float:
        raise NotImplementedError

    def chain(self, index: str, at: dt.datetime, strikes_each_side: int = 10) -> Chain:
        raise NotImplementedError

    def bars(self, index: str, day: dt.date, minutes: int = 15, until: dt.datetime | None = None) -> list[Bar]:
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


def _minute_of_session(at: dt.datetime) -> tuple[dt.date, int]:
    local = at.astimezone(IST)
    opened = dt.datetime.combine(local.date(), SESSION_OPEN, IST)
    minute = int((local - opened).total_seconds() // 60)
    return local.date(), min(max(minute, 0), SESSION_MINUTES)


class SyntheticMarket(Provider):
    """A deterministic market: a smooth daily level plus a seeded intraday random walk."""

    name = "synthetic"

    def __init__(self, seed: int | str = 0) -> None:
        self.seed = seed

    @functools.lru_cache(maxsize=64)
    def _path(self, index: str, day: dt.date) -> tuple[float, ...]:
        spec = _spec(index)
        days = (day - dt.date(2024, 1, 1)).days
        level = spec.base * math.exp(0.06 * math.sin(days / 45.0) + 0.02 * math.sin(days / 7.3))
        level *= math.exp(0.006 * _rng(self.seed, index, day, "open").gauss(0, 1))
        sigma_minute = spec.vol / math.sqrt(252 * SESSION_MINUTES)
        rng = _rng(self.seed, index, day, "path")
        path = [level]
        for _ in range(SESSION_MINUTES):
            path.append(path[-1] * math.exp(sigma_minute * rng.gauss(0, 1)))
        return tuple(path)

    def spot(self, index: str, at: dt.datetime) -> float:
        day, minute = _minute_of_session(at)
        return round(self._path(index.upper(), day)[minute], 2)

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

    def chain(self, index: str, at: dt.datetime, strikes_each_side: int = 10) -> Chain:
        index = index.upper()
        spec = _spec(index)
        spot = self.spot(index, at)
        local = at.astimezone(IST)
        expiry = self.expiry(index, local.date())
        expires_at = dt.datetime.combine(expiry, dt.time(15, 30), IST)
        years = max((expires_at - local).total_seconds(), 3600.0) / (365.0 * 86400.0)
        atm = round(spot / spec.strike_step) * spec.strike_step
        _, minute = _minute_of_session(at)
        day_fraction = max(minute, 1) / SESSION_MINUTES
        rng = _rng(self.seed, index, local.replace(microsecond=0).isoformat(), "chain")
        chain = Chain(index=index, at=at, spot=spot, expiry=expiry)
        for i in range(-strikes_each_side, strikes_each_side + 1):
            strike = float(atm + i * spec.strike_step)
            moneyness = math.log(strike / spot)
            for option_type in ("CE", "PE"):
                iv = spec.vol * (1.0 + 2.5 * abs(moneyness) - 0.8 * moneyness) + rng.uniform(-0.004, 0.004)
                price = black_scholes(spot, strike, years, iv, RISK_FREE, option_type)
                # Open interest clusters at the money; puts are written below spot, calls above.
                bias = 1.25 if (option_type == "PE") == (strike < spot) else 0.8
                weight = math.exp(-((strike - spot) / (6 * spec.strike_step)) ** 2)
                oi = int(spec.lot * rng.uniform(800, 2400) * weight * bias) + spec.lot * 10
                volume = int(oi * rng.uniform(0.2, 1.5) * day_fraction)
                chain.quotes.append(
                    Quote(strike, option_type, round(max(price, 0.05), 2), oi, volume, round(iv, 4))
                )
        return chain

    def bars(self, index: str, day: dt.date, minutes: int = 15, until: dt.datetime | None = None) -> list[Bar]:
        index = index.upper()
        path = self._path(index, day)
        opened = dt.datetime.combine(day, SESSION_OPEN, IST)
        last_minute = SESSION_MINUTES
        if until is not None:
            last_minute = min(int((until.astimezone(IST) - opened).total_seconds() // 60), SESSION_MINUTES)
        out = []
        for start in range(0, SESSION_MINUTES, minutes):
            end = min(start + minutes, SESSION_MINUTES)
            if end > last_minute:
                break
            points = path[start : end + 1]
            volume = int(_rng(self.seed, index, day, start, "volume").uniform(2e5, 9e5) * minutes)
            out.append(
                Bar(
                    index=index,
                    start=opened + dt.timedelta(minutes=start),
                    open=round(points[0], 2),
                    high=round(max(points), 2),
                    low=round(min(points), 2),
                    close=round(points[-1], 2),
                    volume=volume,
                )
            )
        return out


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
