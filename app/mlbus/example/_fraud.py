"""The card-fraud scenario: payments whose fraud depends on features a model can learn.

Each card has a usual spend, a home country, a taste for online shopping and
an activity level. Payments come in sessions (sometimes bursts of several
within minutes) with a day/night rhythm. Whether a payment is fraud is drawn
from a logistic "concept" of what it looks like:

- before drift (concept A, card-not-present fraud): amount well above the
  card's usual, risky categories (gift cards, electronics, jewelry), abroad,
  online, and bursts (payments in the previous 10 minutes);
- after drift (concept B, counterfeit cards and card testing): small amounts,
  fuel and grocery, chip-and-pin at home, longer bursts.

Covariate drift moves the inputs instead: amounts x1.4, four times more
payments abroad, more online shopping and travel. A chargeback (the label)
follows every payment 30 minutes to weeks later, fraud or not, so labels are
complete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mlbus.example._dataset import DriftKind, GeneratedData, SourceEvents
from mlbus.example._values import (
    BoolArray,
    Cell,
    FloatArray,
    IntArray,
    field_values,
    iso_times,
    unique_strings,
)
from mlbus.spec import ProjectSpec

CATEGORIES = (
    "grocery",
    "restaurants",
    "fuel",
    "retail",
    "electronics",
    "travel",
    "entertainment",
    "gift_cards",
    "jewelry",
    "health",
)
CATEGORY_WEIGHTS = np.array([0.24, 0.18, 0.12, 0.15, 0.05, 0.04, 0.08, 0.02, 0.02, 0.10])
CATEGORY_WEIGHTS_DRIFTED = np.array([0.17, 0.15, 0.09, 0.15, 0.09, 0.12, 0.09, 0.04, 0.03, 0.07])
CATEGORY_SCALE = np.array([1.0, 0.8, 1.1, 1.4, 3.5, 5.0, 0.9, 1.5, 4.0, 1.2])
"""Typical ticket size per category, relative to the card's usual spend."""
CATEGORY_ONLINE = np.array([0.3, 0.5, 0.05, 1.0, 1.6, 2.2, 1.3, 2.5, 1.0, 0.8])
"""How much more (or less) often a category is bought online."""
RISK_A = np.array([-0.6, -0.5, -0.4, 0.0, 1.3, 0.6, -0.2, 1.8, 1.4, -0.5])
RISK_B = np.array([0.9, -0.2, 1.6, 0.1, -0.5, -0.6, 0.0, 0.3, -0.4, 0.2])

COUNTRIES = ("US", "CA", "GB", "DE", "FR", "ES", "IT", "MX", "BR", "IN", "JP", "AU")
HOME_WEIGHTS = np.array([0.55, 0.10, 0.10, 0.07, 0.06, 0.03, 0.03, 0.02, 0.01, 0.01, 0.01, 0.01])
CHANNELS = ("pos", "contactless", "online")
POS, CONTACTLESS, ONLINE = 0, 1, 2
REASONS_ONLINE = ("card_not_present", "account_takeover")
REASONS_PRESENT = ("card_present_counterfeit", "lost_or_stolen")

DIURNAL = np.array(
    [
        0.20,
        0.10,
        0.08,
        0.07,
        0.08,
        0.15,
        0.35,
        0.60,
        0.85,
        1.00,
        1.05,
        1.15,
        1.25,
        1.15,
        1.05,
        1.05,
        1.10,
        1.20,
        1.25,
        1.20,
        1.05,
        0.85,
        0.60,
        0.35,
    ]
)
"""Relative payment volume per hour of the day."""
WEEKLY = np.array([0.93, 0.96, 0.98, 1.00, 1.12, 1.10, 0.91])
"""Relative payment volume per weekday, Monday first: Friday and Saturday are the busiest."""
WEEKEND_LATE_H = 1
"""On Saturday and Sunday the day's rhythm starts this many hours later."""

TARGET_FRAUD_RATE = 0.03
PAYMENTS_PER_CARD_PER_DAY = 3.0
BURST_SHARE = 0.07
BURST_GAP_MS = 75_000.0
MERCHANTS_PER_CATEGORY = 400
VELOCITY_WINDOW_MS = 600_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


@dataclass(frozen=True)
class FraudBinding:
    """Where the scenario's facts land in a spec: source names and their key fields."""

    transactions: str
    chargebacks: str


def bind_fraud(spec: ProjectSpec) -> FraudBinding | None:
    """The spec's transaction and chargeback sources, if they fit this scenario (else None).

    A fit needs a data source with float `amount` and enums `merchant_category`,
    `country`, `channel` that accept the scenario's values, a declared event id,
    and a labels source for it with a boolean label.
    """
    for tx_name, tx in spec.data_sources().items():
        fields = tx.contract.fields
        needs = {"merchant_category": CATEGORIES, "country": COUNTRIES, "channel": CHANNELS}
        if tx.event_id is None or "amount" not in fields or fields["amount"].type != "float":
            continue
        if not all(
            name in fields
            and fields[name].type == "enum"
            and set(values) <= set(fields[name].values or ())
            for name, values in needs.items()
        ):
            continue
        for cb_name, cb in spec.label_sources().items():
            link = cb.labels
            if (
                link is not None
                and link.source == tx_name
                and cb.contract.fields[link.label_field].type == "bool"
            ):
                return FraudBinding(transactions=tx_name, chargebacks=cb_name)
    return None


def generate_fraud(
    spec: ProjectSpec,
    binding: FraudBinding,
    n: int,
    *,
    drift_at: int | None,
    drift_kind: DriftKind,
    seed: int,
    start_ms: int,
    days: int,
) -> GeneratedData:
    """`n` payments and `n` chargebacks, drift from payment index `drift_at` on."""
    rng = np.random.default_rng(seed)
    tx_source = spec.sources[binding.transactions]
    tx_fields = tx_source.contract.fields
    assert tx_source.event_id is not None  # bind_fraud checked

    # Cards: who pays, how much, where, how.
    n_cards = int(np.clip(round(n / (days * PAYMENTS_PER_CARD_PER_DAY)), 5, 900_000))
    card_mu = rng.normal(np.log(28.0), 0.5, n_cards)
    card_online = rng.beta(2.0, 5.0, n_cards)
    card_home = rng.choice(len(COUNTRIES), size=n_cards, p=HOME_WEIGHTS)
    card_activity = rng.lognormal(0.0, 0.8, n_cards)
    numbers = rng.choice(np.arange(1, 1_000_000), size=n_cards, replace=False)
    card_ids = unique_strings(
        tx_fields[tx_source.entity], tx_source.entity, n_cards, rng, (_numbered("card_", numbers),)
    )

    # Sessions → payment times, sorted: the order a producer sends them in.
    t_rel, session, session_effect = _timeline(rng, n, days, start_ms)
    session_card = rng.choice(
        n_cards, size=len(session_effect), p=card_activity / card_activity.sum()
    )
    card = session_card[session]

    post = np.arange(n) >= (n if drift_at is None else drift_at)
    covariate = post & (drift_kind in ("covariate", "both"))
    concept = post & (drift_kind in ("concept", "both"))

    # What each payment looks like (covariate drift moves these). Every draw is
    # made for every payment whatever the drift, so payments before `drift_at`
    # are identical to a run without drift.
    draws = _Draws(
        category=rng.choice(len(CATEGORIES), size=n, p=CATEGORY_WEIGHTS),
        category_drifted=rng.choice(len(CATEGORIES), size=n, p=CATEGORY_WEIGHTS_DRIFTED),
        online=rng.random(n),
        contactless=rng.random(n),
        foreign=rng.random(n),
        destination=rng.integers(0, len(COUNTRIES) - 1, n),
        spend=rng.normal(0.0, 0.55, n),
    )
    cards = _Cards(mu=card_mu, online=card_online, home=card_home)
    amount_spec = tx_fields["amount"]
    bounds = (
        max(amount_spec.min if amount_spec.min is not None else 0.01, 0.01),
        amount_spec.max if amount_spec.max is not None else 1e9,
    )
    pay = _payments(draws, cards, card, covariate, bounds)
    burst = np.log1p(_recent_count(card, t_rel, VELOCITY_WINDOW_MS))
    effect = session_effect[session]

    # Whether it is fraud: concept drift changes this rule, not the inputs. The
    # intercepts are fitted on undrifted payments so every run shares them.
    base = _payments(draws, cards, card, np.zeros(n, dtype=bool), bounds)
    intercept_a = _intercept(_logit_a(base, burst, effect), TARGET_FRAUD_RATE)
    intercept_b = _intercept(_logit_b(base, burst, effect), TARGET_FRAUD_RATE)
    logit = np.where(
        concept,
        _logit_b(pay, burst, effect) + intercept_b,
        _logit_a(pay, burst, effect) + intercept_a,
    )
    is_fraud = rng.random(n) < _sigmoid(logit)

    # Transactions, in contract field order.
    tx_ids = unique_strings(tx_fields[tx_source.event_id], tx_source.event_id, n, rng)
    times_ms = t_rel + start_ms
    merchant_pool = (
        unique_strings(
            tx_fields["merchant_id"],
            "merchant_id",
            len(CATEGORIES) * MERCHANTS_PER_CATEGORY,
            rng,
            (lambda i: f"m_{i:05d}",),
        )
        if "merchant_id" in tx_fields and tx_fields["merchant_id"].type == "string"
        else []
    )
    merchant = pay.category * MERCHANTS_PER_CATEGORY + rng.integers(0, MERCHANTS_PER_CATEGORY, n)
    known: dict[str, Callable[[], list[Cell]]] = {
        tx_source.event_id: lambda: list(tx_ids),
        tx_source.entity: lambda: [card_ids[i] for i in card],
        tx_source.event_time: lambda: list(iso_times(times_ms)),
        "amount": lambda: [float(a) for a in pay.amount],
        "merchant_category": lambda: [CATEGORIES[i] for i in pay.category],
        "country": lambda: [COUNTRIES[i] for i in pay.country],
        "channel": lambda: [CHANNELS[i] for i in pay.channel],
    }
    if merchant_pool:
        known["merchant_id"] = lambda: [merchant_pool[i] for i in merchant]
    transactions = _columns(spec, binding.transactions, known, n, rng, covariate, times_ms)

    # Chargebacks: one verdict per payment, later, sent in their own time order.
    cb_source = spec.sources[binding.chargebacks]
    link = cb_source.labels
    assert link is not None
    wait = np.minimum(rng.lognormal(np.log(6 * HOUR_MS), 1.0, n), 30 * DAY_MS)
    delay = 1_800_000 + wait.astype(np.int64)
    cb_order = np.argsort(times_ms + delay, kind="stable")
    cb_times = (times_ms + delay)[cb_order]
    reason_online = rng.random(n) < 0.8
    reason_present = rng.random(n) < 0.65
    reasons: list[Cell] = [
        None
        if not is_fraud[i]
        else (
            REASONS_ONLINE[0 if reason_online[i] else 1]
            if pay.online[i]
            else REASONS_PRESENT[0 if reason_present[i] else 1]
        )
        for i in cb_order
    ]
    cb_fields = cb_source.contract.fields
    cb_known: dict[str, Callable[[], list[Cell]]] = {
        link.event_id_field: lambda: [tx_ids[i] for i in cb_order],
        link.label_field: lambda: [bool(is_fraud[i]) for i in cb_order],
        cb_source.event_time: lambda: list(iso_times(cb_times)),
    }
    if cb_fields[cb_source.entity].type == tx_fields[tx_source.entity].type:
        cb_known[cb_source.entity] = lambda: [card_ids[card[i]] for i in cb_order]
    if cb_source.event_id is not None:
        cb_id_field = cb_source.event_id
        cb_ids = unique_strings(cb_fields[cb_id_field], cb_id_field, n, rng)
        cb_known[cb_id_field] = lambda: list(cb_ids)
    reason_spec = cb_fields.get("reason_code")
    if (
        reason_spec is not None
        and reason_spec.nullable
        and set(REASONS_ONLINE + REASONS_PRESENT) <= set(reason_spec.values or ())
    ):
        cb_known["reason_code"] = lambda: reasons
    chargebacks = _columns(spec, binding.chargebacks, cb_known, n, rng, None, cb_times)

    return GeneratedData(
        scenario="fraud",
        sources={binding.transactions: transactions, binding.chargebacks: chargebacks},
        drift_at=drift_at,
        drift_kind=drift_kind,
        seed=seed,
        label_rate_before=float(is_fraud[~post].mean()) if (~post).any() else None,
        label_rate_after=float(is_fraud[post].mean()) if post.any() else None,
    )


@dataclass(frozen=True)
class _Cards:
    mu: FloatArray
    online: FloatArray
    home: IntArray


@dataclass(frozen=True)
class _Draws:
    """The random numbers behind each payment's looks, drawn once per run."""

    category: IntArray
    category_drifted: IntArray
    online: FloatArray
    contactless: FloatArray
    foreign: FloatArray
    destination: IntArray
    spend: FloatArray


@dataclass(frozen=True)
class _Payments:
    category: IntArray
    online: BoolArray
    channel: IntArray
    foreign: BoolArray
    country: IntArray
    amount: FloatArray
    ratio: FloatArray
    """log(amount / the card's usual spend), clipped."""


def _payments(
    draws: _Draws, cards: _Cards, card: IntArray, drifted: BoolArray, bounds: tuple[float, float]
) -> _Payments:
    """What the payments look like, with covariate drift where `drifted` is true."""
    category = np.where(drifted, draws.category_drifted, draws.category)
    online_p = (cards.online[card] + np.where(drifted, 0.2, 0.0)) * CATEGORY_ONLINE[category]
    online = draws.online < np.clip(online_p, 0.0, 0.97)
    channel = np.where(online, ONLINE, np.where(draws.contactless < 0.6, CONTACTLESS, POS))
    foreign = draws.foreign < np.where(drifted, 0.15, 0.04)
    home = cards.home[card]
    country = np.where(foreign, (home + 1 + draws.destination) % len(COUNTRIES), home)
    log_amount = cards.mu[card] + draws.spend + np.log(CATEGORY_SCALE[category])
    log_amount = log_amount + np.where(drifted, np.log(1.4), 0.0)
    amount = np.clip(np.round(np.exp(log_amount), 2), *bounds)
    ratio = np.clip(np.log(amount) - cards.mu[card], -2.0, 4.0)
    return _Payments(category, online, channel, foreign, country, amount, ratio)


def _logit_a(p: _Payments, burst: FloatArray, effect: FloatArray) -> FloatArray:
    """Concept A, card-not-present fraud: big for the card, risky goods, abroad, online, bursts."""
    risk: FloatArray = (
        1.2 * p.ratio + RISK_A[p.category] + 1.7 * p.foreign + 1.0 * p.online + 1.0 * burst
    )
    return risk + effect


def _logit_b(p: _Payments, burst: FloatArray, effect: FloatArray) -> FloatArray:
    """Concept B, counterfeit cards and card testing: small, fuel/grocery, chip at home, bursts."""
    risk: FloatArray = (
        -1.0 * p.ratio
        + RISK_B[p.category]
        + 1.4 * (p.channel == POS)
        - 0.4 * p.foreign
        - 0.6 * p.online
        + 1.5 * burst
    )
    return risk + effect


def _numbered(prefix: str, numbers: IntArray) -> Callable[[int], str]:
    return lambda i: f"{prefix}{numbers[i - 1]:06d}"


def _timeline(
    rng: np.random.Generator, n: int, days: int, start_ms: int
) -> tuple[IntArray, IntArray, FloatArray]:
    """Payment times (ms from start, sorted), each payment's session, and each session's risk.

    A session is one payment, or a burst of several a minute or two apart. Sessions
    follow a daily rhythm (DIURNAL) and a weekly one (WEEKLY volume per weekday, and a
    weekend rhythm WEEKEND_LATE_H hours later), as card payments do.
    """
    burst = rng.random(n) < BURST_SHARE
    sizes = np.where(burst, 2 + rng.geometric(0.35, n), 1).astype(np.int64)
    ends = np.cumsum(sizes)
    k = int(np.searchsorted(ends, n)) + 1
    sizes = sizes[:k]
    sizes[-1] -= int(ends[k - 1]) - n
    # weekday of each day of the span (1970-01-01 was a Thursday: Monday is 0)
    weekday = ((start_ms // DAY_MS + np.arange(days) + 3) % 7).astype(np.int64)
    volume = WEEKLY[weekday]
    day = rng.choice(days, size=k, p=volume / volume.sum())
    weekday_hour = rng.choice(24, size=k, p=DIURNAL / DIURNAL.sum())
    weekend_hour = (weekday_hour + WEEKEND_LATE_H) % 24
    hour = np.where(weekday[day] >= 5, weekend_hour, weekday_hour)
    start = day * DAY_MS + hour * HOUR_MS + rng.integers(0, HOUR_MS, size=k)
    effect = rng.normal(0.0, 0.7, k)
    session = np.repeat(np.arange(k), sizes)
    gaps = (rng.exponential(BURST_GAP_MS, n) + 1000).astype(np.int64)
    first = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    gaps[first] = 0
    total = np.cumsum(gaps)
    t = start[session] + total - np.repeat(total[first], sizes)
    order = np.argsort(t, kind="stable")
    return t[order].astype(np.int64), session[order], effect


def _recent_count(card: IntArray, t: IntArray, window_ms: int) -> IntArray:
    """For each payment, how many earlier payments of the same card fall in the last `window_ms`."""
    key = card.astype(np.int64) * (1 << 42) + t
    ordered = np.sort(key)
    return (
        np.searchsorted(ordered, key, "left") - np.searchsorted(ordered, key - window_ms, "left")
    ).astype(np.int64)


def _sigmoid(x: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + np.exp(-x))


def _intercept(logits: FloatArray, rate: float) -> float:
    """The shift that makes the mean fraud probability over `logits` equal `rate` (bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if float(_sigmoid(logits + mid).mean()) > rate:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def _columns(
    spec: ProjectSpec,
    source_name: str,
    known: dict[str, Callable[[], list[Cell]]],
    n: int,
    rng: np.random.Generator,
    shifted: BoolArray | None,
    times_ms: IntArray,
) -> SourceEvents:
    """Columns in contract order: the scenario's own values, contract-driven ones for the rest."""
    columns: dict[str, list[Cell]] = {}
    for name, field_spec in spec.sources[source_name].contract.fields.items():
        if name in known:
            columns[name] = known[name]()
        else:
            columns[name] = field_values(field_spec, name, n, rng, shifted, times_ms)
    return SourceEvents(source=source_name, columns=columns)
