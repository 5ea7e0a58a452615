"""Deterministic scale data for benchmarks, loaded with PostgreSQL ``COPY``.

One seeded :class:`random.Random` drives every choice, so a seed always yields the same data
(ids aside: they start after whatever the database already holds). Rows are generated one
opportunity at a time into text buffers and flushed per chunk of opportunities with ``COPY``:
memory stays flat however many visits are asked for, and no model ``save()`` runs.

The data mimics the incident at scale: every completed work is approved with its visits
approved/agree, and about one access in twenty has works past its claim limit (by 1-20% of the
cap), approved and accrued like the real ones. The cached ``saved_*`` fields and
``payment_accrued`` are computed here with the host's rules, so a full recompute
(``update_payment_accrued_for_user(access, incremental=False)``) changes nothing.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime
import io
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import TextIO

from django.db import connection, transaction

from commcare_connect.demo.host_rows import CURRENCY_NAMES, delivery_type

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
DAY = 86400
# Submissions fall inside the duplicate-flag bug's lifetime.
WINDOW_START = datetime.date(2025, 1, 1)
# Old rows got ``date_created`` back-filled with one default; some opportunities mimic that.
SHARED_DEFAULT_TS = int(
    (datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC) - EPOCH).total_seconds()
)
LEGACY_SHARE = 0.1
OVER_CAP_EVERY = 20  # one access in twenty goes over its cap
PAID_SHARE = 0.4
SUSPENDED_SHARE = 0.01
VISITS_PER_OPPORTUNITY = 5000
# Currency, per-unit multiplier, rate around which monthly rates move.
CURRENCIES = [("USD", 1, None), ("KES", 130, 129.5), ("INR", 83, 83.2), ("NGN", 1500, 1480.0)]
RATE_MONTHS = 30  # monthly rates from WINDOW_START - 1 month on
CENT = Decimal("0.01")
NULL = "\\N"  # COPY text format
UUID_NAMESPACE = uuid.UUID("5b0a3f63-8a76-4a0f-9a34-6f1c3d1f3b8e")
SEEDER = "seed_synthetic"  # created_by / modified_by of the rows that have them
CLAIM_END = "2099-12-31"  # claims stay open (the processor compares them with today)
# Per table, the first group of the UUID columns derived from row ids (see _row_uuid).
UUID_TAGS = {"program": 1, "pu": 2, "access": 3, "invoice": 4, "visit": 5, "payment": 6}

# Table, key, columns written (nullable columns left out stay NULL), upper bound of rows as a
# function of (visits, opportunities): used to reserve id ranges before writing.
TABLES: list[tuple[str, str, tuple[str, ...], Callable[[int, int], int]]] = [
    (
        "organization_organization",
        "org",
        (
            "id", "created_by", "modified_by", "date_created", "date_modified", "name", "slug",
            "program_manager", "funder", "has_used_connect", "regions", "website",
            "office_address", "contact_emails", "eoi_links", "notes", "verified",
        ),
        lambda n, k: k,
    ),
    (
        "program_program",
        "program",
        (
            "id", "created_by", "modified_by", "date_created", "date_modified", "program_id",
            "name", "slug", "description", "budget", "start_date", "end_date",
            "delivery_type_id", "organization_id",
        ),
        lambda n, k: k,
    ),
    (
        "users_user",
        "user",
        (
            "id", "password", "is_superuser", "is_staff", "is_active", "date_joined", "user_id",
            "name", "username",
        ),
        lambda n, k: n,
    ),
    (
        "opportunity_opportunity",
        "opp",
        (
            "id", "created_by", "modified_by", "date_created", "date_modified", "opportunity_id",
            "name", "description", "active", "start_date", "total_budget", "auto_approve_visits",
            "auto_approve_payments", "automatic_visit_verification", "is_test", "archived",
            "managed", "currency_id", "organization_id", "program_id",
            "supervising_organization_id",
        ),
        lambda n, k: k,
    ),
    (
        "opportunity_opportunityverificationflags",
        "flags",
        ("id", "duration", "gps", "duplicate", "location", "catchment_areas", "opportunity_id"),
        lambda n, k: k,
    ),
    (
        "opportunity_paymentunit",
        "pu",
        (
            "id", "payment_unit_id", "amount", "org_amount", "name", "description", "max_total",
            "max_daily", "opportunity_id",
        ),
        lambda n, k: 3 * k,
    ),
    (
        "opportunity_deliverunit",
        "du",
        ("id", "app", "slug", "name", "optional", "payment_unit_id"),
        lambda n, k: 9 * k,
    ),
    (
        "opportunity_opportunityaccess",
        "access",
        (
            "id", "opportunity_access_id", "date_learn_started", "accepted", "invite_id",
            "payment_accrued", "suspended", "suspension_date", "suspension_reason",
            "invited_date", "last_active", "opportunity_id", "user_id",
        ),
        lambda n, k: n,
    ),
    (
        "opportunity_opportunityclaim",
        "claim",
        ("id", "end_date", "date_claimed", "opportunity_access_id"),
        lambda n, k: n,
    ),
    (
        "opportunity_opportunityclaimlimit",
        "limit",
        ("id", "max_visits", "opportunity_claim_id", "payment_unit_id"),
        lambda n, k: 3 * n,
    ),
    (
        "opportunity_paymentinvoice",
        "invoice",
        (
            "id", "payment_invoice_id", "amount", "date", "invoice_number", "service_delivery",
            "status", "opportunity_id",
        ),
        lambda n, k: k,
    ),
    (
        "opportunity_completedwork",
        "work",
        (
            "id", "status", "last_modified", "entity_id", "entity_name", "status_modified_date",
            "payment_date", "date_created", "saved_completed_count", "saved_approved_count",
            "saved_payment_accrued", "saved_payment_accrued_usd", "saved_org_payment_accrued",
            "saved_org_payment_accrued_usd", "opportunity_access_id", "invoice_id",
            "payment_unit_id",
        ),
        lambda n, k: n,
    ),
    (
        "opportunity_uservisit",
        "visit",
        (
            "id", "xform_id", "user_visit_id", "entity_id", "entity_name", "visit_date",
            "status", "form_json", "flagged", "status_modified_date", "review_status",
            "review_status_modified_date", "review_created_on", "date_created",
            "completed_work_id", "deliver_unit_id", "opportunity_id", "opportunity_access_id",
            "user_id",
        ),
        lambda n, k: n,
    ),
    (
        "opportunity_payment",
        "payment",
        (
            "id", "payment_id", "created_at", "amount", "amount_usd", "date_paid", "confirmed",
            "opportunity_access_id", "organization_id", "invoice_id",
        ),
        lambda n, k: n + k,
    ),
]  # fmt: skip


@dataclass
class SyntheticResult:
    """Counts of what was written, and where the time went."""

    seed: int
    visits: int = 0
    works: int = 0
    accesses: int = 0
    over_cap_accesses: int = 0
    opportunities: int = 0
    opportunity_ids: list[int] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class _Clock:
    """Timestamps as integer seconds since the epoch, formatted for COPY with a day cache."""

    def __init__(self) -> None:
        self._days: dict[int, str] = {}

    def day(self, day_number: int) -> str:
        text = self._days.get(day_number)
        if text is None:
            text = (EPOCH + datetime.timedelta(days=day_number)).strftime("%Y-%m-%d")
            self._days[day_number] = text
        return text

    def ts(self, seconds: int) -> str:
        d, s = divmod(seconds, DAY)
        return f"{self.day(d)} {s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}+00"


class _Rates:
    """USD conversion exactly as the host's recompute does it: rate on or before the day."""

    def __init__(self, rows: list[tuple[str, datetime.date, Decimal]]) -> None:
        self._days: dict[str, list[int]] = {}
        self._rates: dict[str, list[Decimal]] = {}
        for code, rate_date, rate in sorted(rows):
            self._days.setdefault(code, []).append((rate_date - WINDOW_START).days)
            self._rates.setdefault(code, []).append(rate)
        self._usd: dict[tuple[str, int, int], str] = {}
        self._window_day = (WINDOW_START - EPOCH.date()).days

    def usd(self, currency: str, amount: int, seconds: int) -> str:
        """``amount`` in USD at the rate of the day of ``seconds``, as COPY text."""
        day = seconds // DAY - self._window_day
        key = (currency, amount, day)
        text = self._usd.get(key)
        if text is None:
            if currency == "USD":
                value = Decimal(amount).quantize(CENT)
            else:
                days = self._days.get(currency, [])
                index = bisect.bisect_right(days, day) - 1
                rate = self._rates[currency][index] if index >= 0 else None
                value = (
                    (Decimal(amount) / rate).quantize(CENT, rounding=ROUND_HALF_UP)
                    if rate
                    else Decimal(0)
                )
            text = str(value)
            self._usd[key] = text
        return text


class _Ids:
    """Next id per table, from the start of the range reserved for this run."""

    def __init__(self, starts: dict[str, int]) -> None:
        self._next = dict(starts)

    def take(self, key: str) -> int:
        value = self._next[key]
        self._next[key] = value + 1
        return value


@dataclass
class _Chunk:
    buffers: dict[str, io.StringIO] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    visits: int = 0

    def add(self, key: str, line: str) -> None:
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = io.StringIO()
        buf.write(line)
        self.rows[key] = self.rows.get(key, 0) + 1


def _row_uuid(table: str, pk: int) -> str:
    """A UUID-shaped value unique per (table, id), cheap to make for millions of rows."""
    return f"5eed{UUID_TAGS[table]:04x}-0000-4000-8000-{pk:012x}"


VISIT_UUID = _row_uuid("visit", 0)[:-12]  # the prefix, inlined in the hot loop


def _hex_id(rng: random.Random, unique: int) -> str:
    """A UUID-shaped id: 80 random bits from the seed, 48 bits from a unique row id."""
    h = f"{rng.getrandbits(80):020x}{unique & 0xFFFFFFFFFFFF:012x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class _Generator:
    """Produces the rows of one opportunity at a time into a :class:`_Chunk`."""

    def __init__(self, seed: int, ids: _Ids, rates: _Rates, delivery_type_id: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.ids = ids
        self.rates = rates
        self.clock = _Clock()
        self.window_day = (WINDOW_START - EPOCH.date()).days
        self.access_counter = 0
        self.over_offset = self.rng.randrange(OVER_CAP_EVERY)
        self.org_id = 0
        self.program_id = 0
        self.delivery_type_id = delivery_type_id
        self.result = SyntheticResult(seed=seed)

    # -- structure -------------------------------------------------------------------------

    def _organization(self, chunk: _Chunk, index: int) -> None:
        """An organization and its program (every opportunity needs one in the host)."""
        org_id = self.ids.take("org")
        created = self.clock.ts(self.window_day * DAY - 90 * DAY)
        chunk.add(
            "org",
            f"{org_id}\t{SEEDER}\t{SEEDER}\t{created}\t{created}\tSynthetic NGO {index}\t"
            f"syn-org-{org_id}\tf\tf\tt\t\t\t\t\t\t\tt\n",
        )
        program_id = self.ids.take("program")
        chunk.add(
            "program",
            f"{program_id}\t{SEEDER}\t{SEEDER}\t{created}\t{created}\t"
            f"{_row_uuid('program', program_id)}\tSynthetic program {index}\t"
            f"syn-program-{program_id}\tSynthetic program {index}\t0\t"
            f"{self.clock.day(self.window_day - 90)}\t{CLAIM_END}\t{self.delivery_type_id}\t"
            f"{org_id}\n",
        )
        self.org_id = org_id
        self.program_id = program_id

    def opportunity(self, chunk: _Chunk, index: int, visit_budget: int) -> None:
        rng = self.rng
        if index % 10 == 0:
            self._organization(chunk, index // 10)
        opp_id = self.ids.take("opp")
        currency, factor, _ = CURRENCIES[rng.randrange(len(CURRENCIES))]
        start_day = self.window_day + rng.randrange(300)
        legacy = rng.random() < LEGACY_SHARE
        created = self.clock.ts(start_day * DAY - 7 * DAY)
        opp_uuid = uuid.uuid5(UUID_NAMESPACE, f"{self.seed}:{opp_id}")
        chunk.add(
            "opp",
            f"{opp_id}\t{SEEDER}\t{SEEDER}\t{created}\t{created}\t{opp_uuid}\t"
            f"Synthetic {self.seed}-{index}\t\tt\t{self.clock.day(start_day)}\t"
            f"{visit_budget * 50 * factor}\tt\tt\tf\tf\tf\tf\t{currency}\t{self.org_id}\t"
            f"{self.program_id}\t{self.org_id}\n",
        )
        duplicate = "t" if rng.random() < 0.2 else "f"
        chunk.add("flags", f"{self.ids.take('flags')}\t1\tf\t{duplicate}\t0\tf\t{opp_id}\n")

        units = []
        for j in range(rng.randint(1, 3)):
            pu_id = self.ids.take("pu")
            amount = rng.choice((1, 2, 3, 5, 8, 10, 15)) * factor
            org_amount = amount // 5
            chunk.add(
                "pu",
                f"{pu_id}\t{_row_uuid('pu', pu_id)}\t{amount}\t{org_amount}\tUnit {j + 1}\t\t"
                f"30\t10\t{opp_id}\n",
            )
            required, optional = [], []
            for k in range(rng.randint(1, 3)):
                du_id = self.ids.take("du")
                is_optional = k > 0 and rng.random() < 0.4
                (optional if is_optional else required).append(du_id)
                chunk.add(
                    "du",
                    f"{du_id}\t\tsyn-{opp_id}-{j + 1}-{k + 1}\tForm {j + 1}.{k + 1}\t"
                    f"{'t' if is_optional else 'f'}\t{pu_id}\n",
                )
            units.append((pu_id, amount, org_amount, required, optional))

        invoice_id = self.ids.take("invoice")
        invoice_day = start_day + 45
        state = {"invoice_org_total": 0}
        remaining = visit_budget
        while remaining > 0:
            remaining -= self._access(
                chunk, opp_id, currency, units, start_day, remaining, legacy, invoice_id,
                invoice_day, state,
            )  # fmt: skip
        chunk.add(
            "invoice",
            f"{invoice_id}\t{_row_uuid('invoice', invoice_id)}\t{state['invoice_org_total']}.00\t"
            f"{self.clock.day(invoice_day)}\tSYN-{opp_id}-1\tt\tpaid\t{opp_id}\n",
        )
        payment_id = self.ids.take("payment")
        paid_at = self.clock.ts(invoice_day * DAY + 12 * 3600)
        chunk.add(
            "payment",
            f"{payment_id}\t{_row_uuid('payment', payment_id)}\t{paid_at}\t"
            f"{state['invoice_org_total']}.00\t\\N\t{paid_at}\tt\t\\N\t{self.org_id}\t"
            f"{invoice_id}\n",
        )
        self.result.opportunities += 1
        self.result.opportunity_ids.append(opp_id)

    # -- one worker ------------------------------------------------------------------------

    def _work_counts(self, caps: list[int], over: bool) -> list[int]:
        rng = self.rng
        counts = [rng.randint(max(1, cap // 2), cap) for cap in caps]
        if over:
            j = rng.randrange(len(caps))
            counts[j] = caps[j] + max(1, round(caps[j] * rng.uniform(0.01, 0.2)))
        return counts

    def _access(
        self,
        chunk: _Chunk,
        opp_id: int,
        currency: str,
        units: list,
        start_day: int,
        budget: int,
        legacy: bool,
        invoice_id: int,
        invoice_day: int,
        state: dict,
    ) -> int:
        """Write one worker's user, access, claim, limits, works, visits; return visits used."""
        rng = self.rng
        clock = self.clock
        user_id = self.ids.take("user")
        access_id = self.ids.take("access")
        joined_day = start_day + rng.randrange(30)
        joined = clock.ts(joined_day * DAY + 9 * 3600)
        chunk.add(
            "user",
            f"{user_id}\t!\tf\tf\tt\t{joined}\t{_hex_id(rng, user_id)}\t"
            f"Worker {user_id}\tsyn-{self.seed}-{user_id}\n",
        )
        claim_id = self.ids.take("claim")
        chunk.add("claim", f"{claim_id}\t{CLAIM_END}\t{clock.day(joined_day)}\t{access_id}\n")
        caps = [rng.randint(5, 30) for _ in units]
        for (pu_id, *_), cap in zip(units, caps, strict=True):
            chunk.add("limit", f"{self.ids.take('limit')}\t{cap}\t{claim_id}\t{pu_id}\n")

        over = (self.access_counter + self.over_offset) % OVER_CAP_EVERY == 0
        self.access_counter += 1
        counts = self._work_counts(caps, over)
        gap = rng.choice((1, 1, 2, 3))
        paid = rng.random() < PAID_SHARE
        paid_total = 0
        accrued = 0
        used = 0
        last_ts = joined_day * DAY
        entity_count = max(counts)
        written = [0] * len(units)
        for e in range(entity_count):
            entity_id = _hex_id(rng, access_id * 4096 + e)
            entity_name = f"Household {e + 1}"
            day = joined_day + 1 + e * gap
            ts = day * DAY + rng.randrange(7 * 3600, 16 * 3600)
            for u, (pu_id, amount, org_amount, required, optional) in enumerate(units):
                if e >= counts[u] or used >= budget:
                    continue
                written[u] += 1
                work_id = self.ids.take("work")
                # Visits: every required form, and (mostly) some of the optional ones.
                forms = list(required)
                if optional and rng.random() < 0.85:
                    forms += rng.sample(optional, rng.randint(1, len(optional)))
                forms = forms[: budget - used]
                complete = all(du in forms for du in required)
                first_ts = ts
                for du_id in forms:
                    ts += rng.randint(120, 1200)
                    received = clock.ts(ts + 60)
                    visit_id = self.ids.take("visit")
                    chunk.add(
                        "visit",
                        f"{visit_id}\t{_hex_id(rng, visit_id)}\t{VISIT_UUID}{visit_id:012x}\t"
                        f"{entity_id}\t{entity_name}\t{clock.ts(ts)}\tapproved\t{{}}\tf\t"
                        f"{received}\tagree\t{received}\t{received}\t{received}\t{work_id}\t"
                        f"{du_id}\t{opp_id}\t{access_id}\t{user_id}\n",
                    )
                used += len(forms)
                # The host's count: min over required forms, capped by the optional total.
                units_done = 1 if complete else 0
                if optional:
                    units_done = min(units_done, sum(1 for du in forms if du in optional))
                # Approved: every required form, and one optional form when there are some.
                approved = complete and (not optional or any(du in optional for du in forms))
                status = "approved" if approved else "pending"
                modified_ts = ts + 300
                pay = org_pay = 0
                if units_done and complete:
                    pay, org_pay = amount * units_done, org_amount * units_done
                pay_usd = self.rates.usd(currency, pay, modified_ts)
                org_usd = self.rates.usd(currency, org_pay, modified_ts)
                is_paid = paid and approved and day < invoice_day
                payment_date = clock.ts(invoice_day * DAY + 12 * 3600) if is_paid else NULL
                if is_paid:
                    paid_total += pay
                    state["invoice_org_total"] += org_pay
                created = SHARED_DEFAULT_TS if legacy else first_ts + 60
                modified = clock.ts(modified_ts)
                chunk.add(
                    "work",
                    f"{work_id}\t{status}\t{modified}\t{entity_id}\t{entity_name}\t{modified}\t"
                    f"{payment_date}\t{clock.ts(created)}\t{units_done}\t{units_done}\t{pay}\t"
                    f"{pay_usd}\t{org_pay}\t{org_usd}\t{access_id}\t"
                    f"{invoice_id if is_paid else NULL}\t{pu_id}\n",
                )
                accrued += pay
                last_ts = max(last_ts, modified_ts)
                self.result.works += 1
            if used >= budget:
                break

        suspended = rng.random() < SUSPENDED_SHARE
        suspension = (
            f"t\t{clock.ts(last_ts + DAY)}\tSynthetic suspension" if suspended else "f\t\\N\t\\N"
        )
        access_uuid = _row_uuid("access", access_id)
        chunk.add(
            "access",
            f"{access_id}\t{access_uuid}\t{joined}\tt\t{access_uuid}\t{accrued}\t{suspension}\t"
            f"{joined}\t{clock.ts(last_ts)}\t{opp_id}\t{user_id}\n",
        )
        if paid and paid_total:
            date_paid = clock.ts(invoice_day * DAY + 12 * 3600)
            usd = self.rates.usd(currency, paid_total, invoice_day * DAY)
            payment_id = self.ids.take("payment")
            chunk.add(
                "payment",
                f"{payment_id}\t{_row_uuid('payment', payment_id)}\t{date_paid}\t{paid_total}.00\t"
                f"{usd}\t{date_paid}\tt\t{access_id}\t\\N\t\\N\n",
            )
        self.result.accesses += 1
        self.result.over_cap_accesses += int(any(n > c for n, c in zip(written, caps, strict=True)))
        self.result.visits += used
        chunk.visits += used
        return used


def _budgets(visits: int, opportunities: int) -> list[int]:
    base, extra = divmod(visits, opportunities)
    return [base + (1 if i < extra else 0) for i in range(opportunities)]


def _chunks(gen: _Generator, budgets: list[int], chunk_visits: int) -> Iterator[_Chunk]:
    chunk = _Chunk()
    for index, budget in enumerate(budgets):
        gen.opportunity(chunk, index, budget)
        if chunk.visits >= chunk_visits:
            yield chunk
            chunk = _Chunk()
    if chunk.rows:
        yield chunk


def _prefetch(chunks: Iterator[_Chunk], depth: int = 2) -> Iterator[_Chunk]:
    """Generate the next chunks in a thread while the current one is being copied.

    COPY waits on the server most of the time (the socket wait releases the GIL), so this uses
    the machine's second core; ``depth`` bounds how many chunks sit in memory.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()  # set when the consumer gives up (a failed COPY)
    errors: list[BaseException] = []

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
        except BaseException as exc:  # re-raised in the consumer
            errors.append(exc)
        finally:
            put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                break
            yield item
    finally:
        stop.set()
        thread.join()
    if errors:
        raise errors[0]


def _raw_cursor(cursor):
    """The driver's own cursor under Django's wrapper: COPY is driver-specific."""
    raw = cursor.cursor if hasattr(cursor, "cursor") else cursor
    if not (hasattr(raw, "copy") or hasattr(raw, "copy_expert")):
        raise RuntimeError("seed_synthetic needs psycopg 3 (cursor.copy) or psycopg2 for COPY")
    return raw


def _reserve_ids(cursor, visits: int, opportunities: int) -> dict[str, int]:
    """Move every sequence past a block big enough for this run; return each block's start.

    Concurrent inserts then get ids above the block, so the explicit ids never collide.
    """
    starts = {}
    for table, key, _columns, bound in TABLES:
        cursor.execute(
            f"SELECT pg_get_serial_sequence('{table}', 'id'), "
            f"COALESCE((SELECT max(id) FROM {table}), 0)"
        )
        seq, max_id = cursor.fetchone()
        cursor.execute(f"SELECT last_value, is_called FROM {seq}")
        last_value, is_called = cursor.fetchone()
        start = max(max_id, last_value if is_called else last_value - 1) + 1
        cursor.execute("SELECT setval(%s, %s)", [seq, start + bound(visits, opportunities)])
        starts[key] = start
    return starts


def _ensure_currencies(cursor) -> None:
    """The ``Currency`` rows the opportunities point at (existing rows win)."""
    for code, _, _ in CURRENCIES:
        cursor.execute(
            "INSERT INTO opportunity_currency (code, name) VALUES (%s, %s) "
            "ON CONFLICT (code) DO NOTHING",
            [code, CURRENCY_NAMES.get(code, code)],
        )


def _ensure_rates(cursor) -> list[tuple[str, datetime.date, Decimal]]:
    """Monthly rates for the synthetic currencies (existing rows win), read back as stored.

    They cover every day a work's status can carry: the host would fetch a missing rate.
    """
    codes = [code for code, _, base in CURRENCIES if base]
    for code, _, base in CURRENCIES:
        if not base:
            continue
        for m in range(RATE_MONTHS):
            year, month = divmod(WINDOW_START.month - 2 + m, 12)
            day = datetime.date(WINDOW_START.year + year, month + 1, 1)
            rate = Decimal(str(round(base * (1 + 0.02 * ((m % 7) - 3) / 3), 4)))
            cursor.execute(
                "INSERT INTO opportunity_exchangerate (currency_code, rate, rate_date, fetched_at)"
                " VALUES (%s, %s, %s, now()) ON CONFLICT (currency_code, rate_date) DO NOTHING",
                [code, rate, day],
            )
    cursor.execute(
        "SELECT currency_code, rate_date, rate FROM opportunity_exchangerate "
        "WHERE currency_code = ANY(%s)",
        [codes],
    )
    return list(cursor.fetchall())


def _copy_chunk(raw_cursor, chunk: _Chunk) -> None:
    """COPY each table's buffered rows, parents first, with psycopg 3 or psycopg2."""
    for table, key, columns, _bound in TABLES:
        buf = chunk.buffers.get(key)
        if buf is None:
            continue
        sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        if hasattr(raw_cursor, "copy"):  # psycopg 3
            with raw_cursor.copy(sql) as copy:
                data = buf.getvalue()
                for start in range(0, len(data), 1 << 20):
                    copy.write(data[start : start + (1 << 20)])
        else:  # psycopg2 reads the buffer as a file
            buf.seek(0)
            raw_cursor.copy_expert(sql, buf, size=1 << 20)
        buf.close()


def _finish(cursor) -> None:
    """Point every sequence just past the table's max id, then refresh planner statistics."""
    for table, *_ in TABLES:
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"COALESCE((SELECT max(id) FROM {table}), 0) + 1, false)"
        )
    for table, *_ in TABLES:
        cursor.execute(f"ANALYZE {table}")


def seed_synthetic(
    visits: int,
    seed: int,
    opportunities: int | None = None,
    stdout: TextIO | None = None,
    chunk_visits: int = 50_000,
) -> SyntheticResult:
    """Write ``visits`` visits (exactly) over ``opportunities`` opportunities; return counts.

    Each chunk of opportunities is copied in its own transaction, so an interrupted run leaves
    whole opportunities only.
    """
    if visits < 1:
        raise ValueError("visits must be positive")
    opportunities = opportunities or max(2, visits // VISITS_PER_OPPORTUNITY)
    opportunities = min(opportunities, visits)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        raw = _raw_cursor(cursor)
        starts = _reserve_ids(cursor, visits, opportunities)
        _ensure_currencies(cursor)
        rates = _Rates(_ensure_rates(cursor))
        gen = _Generator(seed, _Ids(starts), rates, delivery_type().pk)
        rows: dict[str, int] = {}
        copied = 0
        chunks = _prefetch(_chunks(gen, _budgets(visits, opportunities), chunk_visits))
        with contextlib.closing(chunks):  # a failed COPY stops the generating thread at once
            for chunk in chunks:
                with transaction.atomic():
                    _copy_chunk(raw, chunk)
                for key, count in chunk.rows.items():
                    rows[key] = rows.get(key, 0) + count
                copied += chunk.visits
                if stdout is not None:
                    elapsed = time.perf_counter() - started
                    stdout.write(f"  {copied:>9} / {visits} visits  {elapsed:7.1f}s\n")
        loaded = time.perf_counter()
        _finish(cursor)
    result = gen.result
    result.rows = rows
    result.seconds = {
        "generate_and_copy": loaded - started,
        "sequences_and_analyze": time.perf_counter() - loaded,
        "total": time.perf_counter() - started,
    }
    return result
