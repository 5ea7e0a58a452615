"""What a planned batch will cost, by the host's own accrual rules.

By default the plan is priced by :mod:`ledger.accrual_rules`: the host's ``update_status``
projected in SQL for every affected access at once, from one read-only snapshot — no row is
written or locked, no host code is called per worker, so a plan of thousands of workers never
holds up their live submissions. ``exact=True`` prices it with the host's own code instead
(:mod:`ledger.pricing_exact`): the flips written in a transaction that is rolled back, the
host's recompute run there for each access. The two agree (the contract suite's differential
test holds them to it on random data, in the real host too); the exact path stays for when
an operator wants the host's code itself to have spoken, at the cost of locking the accesses'
rows for as long as it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from ledger import accrual_rules
from ledger.accrual_rules import AccessSums
from ledger.host import Currency, Opportunity, OpportunityAccess, Payment
from ledger.planners.held import HeldRows
from ledger.planners.rows import PlannedRow
from ledger.sql import cursor, db_now, int_array, read_only_snapshot, table

ZERO = Decimal(0)


@dataclass
class AccessPrice:
    access_id: int
    opportunity_id: int
    opportunity: str
    worker: str
    currency: str
    suspended: bool
    accrual_now: int
    works_accrued_now: int
    worker_change: int = 0
    worker_change_usd: Decimal = ZERO
    org_change: int = 0
    org_change_usd: Decimal = ZERO
    paid_to_date: Decimal = ZERO

    @property
    def projected_accrual(self) -> int:
        return self.works_accrued_now + self.worker_change

    @property
    def overpayment_exposure(self) -> Decimal:
        return max(ZERO, self.paid_to_date - self.projected_accrual)


class Stamps(Mapping):
    """The ``status_modified_date`` flips restore, by (entity kind, id): an undo's hundreds of
    thousands held as one dict of ids per kind, without a key tuple per row."""

    __slots__ = ("by_kind",)

    def __init__(self) -> None:
        self.by_kind: dict[str, dict[int, object]] = {}

    def add(self, kind: str, pk: int, stamp: object) -> None:
        self.by_kind.setdefault(kind, {})[pk] = stamp

    def __getitem__(self, key: tuple[str, int]) -> object:
        kind, pk = key
        return self.by_kind[kind][pk]

    def __iter__(self) -> Iterator[tuple[str, int]]:
        for kind, ids in self.by_kind.items():
            for pk in ids:
                yield kind, pk

    def __len__(self) -> int:
        return sum(map(len, self.by_kind.values()))


@dataclass
class Pricing:
    prices: dict[int, AccessPrice]
    # Planned works the host's recompute would not leave with their planned status: id -> the
    # status it would give them instead.
    unstable: dict[int, str]
    # Accesses whose recompute depends on the order the host's unordered query returns their
    # works (a child unit never worked under a worked parent unit); priced in id order.
    order_dependent: set[int] = field(default_factory=set)


def _described(access_ids: list[int]) -> dict[int, AccessPrice]:
    """Who and what each access is, its accrual now and what it has been paid (one query)."""
    User = OpportunityAccess._meta.get_field("user").related_model
    with cursor() as cur:
        cur.execute(
            f"""SELECT a.id, a.opportunity_id, o.opportunity_id::text, u.username, u.name,
                       a.user_id, cur.code, a.suspended, a.payment_accrued, p.paid
                FROM {table(OpportunityAccess)} a
                JOIN {table(Opportunity)} o ON o.id = a.opportunity_id
                JOIN {table(User)} u ON u.id = a.user_id
                LEFT JOIN {table(Currency)} cur ON cur.code = o.currency_id
                LEFT JOIN (
                    SELECT opportunity_access_id AS id, sum(amount) AS paid FROM {table(Payment)}
                    WHERE opportunity_access_id = ANY(%(ids)s::bigint[]) GROUP BY 1
                ) p ON p.id = a.id
                WHERE a.id = ANY(%(ids)s::bigint[])""",
            {"ids": int_array(access_ids)},
        )
        rows = cur.fetchall()
    return {
        pk: AccessPrice(
            access_id=pk,
            opportunity_id=opportunity_id,
            opportunity=opportunity,
            worker=username or name or str(user_id),
            currency=code or "",
            suspended=suspended,
            accrual_now=accrued,
            works_accrued_now=0,
            paid_to_date=paid or ZERO,
        )
        for (pk, opportunity_id, opportunity, username, name, user_id, code, suspended, accrued,
             paid) in rows
    }  # fmt: skip


def _priced(described: dict[int, AccessPrice], sums: dict[int, AccessSums]) -> dict:
    prices = {}
    for access_id, p in sorted(described.items()):
        s = sums.get(access_id) or AccessSums()
        p.works_accrued_now = s.pay_now
        p.worker_change = s.pay_after - s.pay_now
        p.worker_change_usd = s.usd_after - s.usd_now
        p.org_change = s.org_after - s.org_now
        p.org_change_usd = s.org_usd_after - s.org_usd_now
        prices[access_id] = p
    return prices


def price(
    rows: Iterable[PlannedRow] | HeldRows,
    progress: Callable[[str], None] | None = None,
    stamps: Mapping[tuple[str, int], object] | None = None,
    *,
    exact: bool = False,
) -> Pricing:
    """Per access: the accrual change the flips in ``rows`` would cause, by the host's rules;
    and the planned works whose planned status the host's recompute would not keep.

    Rows of any target status price alike. ``stamps`` maps (entity kind, id) to the
    ``status_modified_date`` a flip restores (an undo; ``None`` restores no date); every other
    flip is stamped with the apply's time, as the projector does. A plan whose pricing needs an
    exchange rate that is not stored is refused: the host would fetch it over the network in
    the middle of its recompute. ``rows`` held by the database (an undo's) are read in the
    pricing snapshot, their dates with them; their digest there is kept as ``priced_digest``.
    """
    held = isinstance(rows, HeldRows)
    if held and exact:
        raise ValueError("the host's own code prices rows read into Python, not held rows")
    with read_only_snapshot():
        if held:
            # The rows are a query: read them in the pricing snapshot, and note what was
            # priced, for the caller to check it is what gets stored.
            flips = rows
            access_ids = rows.access_ids()
            count = rows.flip_count() if progress else 0
            rows.priced_digest = rows.digest()
        else:
            flips = [r for r in rows if not r.excluded]
            access_ids = sorted({r.access_id for r in flips if r.access_id is not None})
            count = len(flips)
        if not access_ids:
            return Pricing({}, {})
        if progress:
            how = "by the host's own code" if exact else "by the host's rules"
            progress(f"pricing {count} flips across {len(access_ids)} accesses {how}")
        described = _described(access_ids)
        # Read in the same snapshot: refuses a plan that would make the host fetch a rate,
        # before the exact path would run the host's code into that fetch.
        projection = accrual_rules.project(
            flips, described, now=db_now(), stamps=stamps, progress=progress
        )
    if not exact:
        prices = _priced(described, projection.sums)
        return Pricing(prices, projection.unstable, projection.order_dependent)

    from ledger import pricing_exact

    sums, unstable = pricing_exact.simulate(flips, sorted(described), progress, stamps=stamps)
    return Pricing(_priced(described, sums), unstable, projection.order_dependent)
