"""The priced plan and the accrual outcomes of a batch, as tables and a small chart.

Everything is rendered on the server: the chart is inline SVG built here, with no script, font
or image fetched from anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

import msgspec
from django.db.models import Count, Q, Sum
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from ledger import host
from ledger.models import AccrualRecompute, CorrectionBatch, ExclusionReason, RecomputeState
from ledger.schema import AccessPlan, PlanReport

ROWS_SHOWN = 200
BARS_SHOWN = 20
ZERO = Decimal(0)


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------


def amount(value, *, signed: bool = False, places: int | None = None) -> str:
    """1234567 → '1,234,567'; signed: '+1,234' / '−1,234' (a real minus sign)."""
    if value is None:
        return "—"
    number = Decimal(value)
    if places is not None:
        number = number.quantize(Decimal(1).scaleb(-places))
    text = f"{abs(number):,}"
    if number < 0:
        return "−" + text
    return ("+" + text) if signed and number > 0 else text


def usd(value, signed: bool = True) -> str:
    return amount(value, signed=signed, places=2)


NUM = "num"


@dataclass
class Table:
    """A table ready for ``admin/ledger/includes/table.html``: cells are (text or safe HTML,
    css class) pairs, numbers already formatted."""

    title: str
    headers: list[tuple[str, str]]
    rows: list[list[tuple]]
    footer: list[list[tuple]] = field(default_factory=list)
    note: str = ""
    css: str = ""


def head(*labels: str) -> list[tuple[str, str]]:
    """Column headers; a label starting with '#' is numeric (right-aligned)."""
    return [(label[1:], NUM) if label.startswith("#") else (label, "") for label in labels]


def num(value, **kwargs) -> tuple[str, str]:
    return amount(value, **kwargs), NUM


def delta(value) -> tuple[str, str]:
    css = NUM + (" neg" if value and Decimal(value) < 0 else " pos" if value else "")
    return amount(value, signed=True), css


def delta_usd(value) -> tuple[str, str]:
    css = NUM + (" neg" if value and Decimal(value) < 0 else " pos" if value else "")
    return usd(value), css


def text(value) -> tuple:
    return (value if value not in (None, "") else "—"), ""


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


@dataclass
class OpportunityLine:
    opportunity_id: int
    name: str
    currency: str
    accesses: int = 0
    works: int = 0
    visits: int = 0
    worker: int = 0
    worker_usd: Decimal = ZERO
    org: int = 0
    org_usd: Decimal = ZERO


@dataclass
class PlanView:
    report: PlanReport
    opportunities: list[OpportunityLine]
    accesses_shown: list[AccessPlan]
    names: dict[int, str] = field(default_factory=dict)

    @property
    def more_accesses(self) -> int:
        return len(self.report.accesses) - len(self.accesses_shown)

    def exclusion_label(self, reason: str) -> str:
        try:
            return str(ExclusionReason(reason).label)
        except ValueError:
            return reason


def opportunity_names(ids) -> dict[int, str]:
    return dict(host.Opportunity.objects.filter(pk__in=list(ids)).values_list("pk", "name"))


def plan_view(batch: CorrectionBatch) -> PlanView | None:
    """The batch's priced plan (``summary["plan"]``), or None when it has none (an undo)."""
    summary = batch.summary if isinstance(batch.summary, dict) else {}
    raw = summary.get("plan")
    if not raw:
        return None
    try:
        report = msgspec.convert(raw, PlanReport, strict=False)
    except msgspec.ValidationError:
        return None
    names = opportunity_names({a.opportunity_id for a in report.accesses})
    lines: dict[tuple[int, str], OpportunityLine] = {}
    for a in report.accesses:
        line = lines.setdefault(
            (a.opportunity_id, a.currency),
            OpportunityLine(
                a.opportunity_id, names.get(a.opportunity_id, a.opportunity), a.currency
            ),
        )
        line.accesses += 1
        line.works += a.works
        line.visits += a.visits
        line.worker += a.worker_accrual_change
        line.worker_usd += a.worker_accrual_change_usd
        line.org += a.org_accrual_change
        line.org_usd += a.org_accrual_change_usd
    return PlanView(
        report=report,
        opportunities=sorted(lines.values(), key=lambda o: (o.name, o.currency)),
        accesses_shown=report.accesses[:ROWS_SHOWN],
        names=names,
    )


# --------------------------------------------------------------------------------------------
# The chart: accrual change per opportunity, worker and organisation, on one USD scale
# --------------------------------------------------------------------------------------------

LABEL_W, BAR_W, VALUE_W = 190, 300, 250
ROW_H, GAP, TOP = 16, 14, 30
# Also set as attributes, so the SVG keeps its colours outside the page (the CSS wins inside).
COLOURS = {"worker": "#417690", "org": "#79aec8"}


def _fit(text: str, length: int = 28) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def accrual_chart(lines: list[OpportunityLine]) -> SafeString:
    """An inline SVG bar chart: each opportunity's worker and org accrual change.

    Bars share a USD scale so opportunities in different currencies compare; each bar's label
    gives the change in the opportunity's own currency and in USD.
    """
    if not lines:
        return mark_safe("")
    shown = sorted(lines, key=lambda o: abs(o.worker_usd) + abs(o.org_usd), reverse=True)
    shown = shown[:BARS_SHOWN]
    values = [v for o in shown for v in (o.worker_usd, o.org_usd)]
    low, high = min(ZERO, *values), max(ZERO, *values)
    span = (high - low) or Decimal(1)

    def x(value: Decimal) -> float:
        return LABEL_W + float((value - low) / span) * BAR_W

    width = LABEL_W + BAR_W + VALUE_W
    height = TOP + len(shown) * (2 * ROW_H + GAP) + 4
    zero = x(ZERO)
    parts = [
        format_html(
            '<text x="{}" y="14" class="legend">'
            '<tspan class="worker-key" fill="{}">■</tspan> worker accrual   '
            '<tspan class="org-key" fill="{}">■</tspan> organisation accrual   '
            "(bars on one USD scale)</text>",
            LABEL_W,
            COLOURS["worker"],
            COLOURS["org"],
        )
    ]
    y = TOP
    for o in shown:
        parts.append(
            format_html(
                '<text x="{}" y="{}" class="name"><title>{} (opportunity {})</title>{}</text>',
                LABEL_W - 8,
                y + ROW_H + 4,
                o.name,
                o.opportunity_id,
                _fit(o.name),
            )
        )
        for css, local, in_usd in (("worker", o.worker, o.worker_usd), ("org", o.org, o.org_usd)):
            left, right = sorted((x(in_usd), zero))
            parts.append(
                format_html(
                    '<rect x="{}" y="{}" width="{}" height="{}" class="{}" fill="{}"/>'
                    '<text x="{}" y="{}" class="value">{} {} ({} USD)</text>',
                    f"{left:.1f}",
                    y + 1,
                    f"{max(right - left, 1.0):.1f}",
                    ROW_H - 3,
                    css,
                    COLOURS[css],
                    LABEL_W + BAR_W + 10,
                    y + ROW_H - 3,
                    amount(local, signed=True),
                    o.currency,
                    usd(in_usd),
                )
            )
            y += ROW_H
        y += GAP
    parts.append(
        format_html(
            '<line x1="{}" y1="{}" x2="{}" y2="{}" class="axis" stroke="#777"/>',
            f"{zero:.1f}",
            TOP - 4,
            f"{zero:.1f}",
            height - 2,
        )
    )
    more = len(lines) - len(shown)
    caption = f"the {len(shown)} largest of {len(lines)} opportunities" if more else ""
    return format_html(
        '<figure class="ledger-chart">'
        '<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{}" height="{}" '
        'viewBox="0 0 {} {}" aria-label="Accrual change per opportunity">'
        "<title>Accrual change per opportunity</title>{}</svg>{}</figure>",
        width,
        height,
        width,
        height,
        mark_safe("".join(parts)),  # each part was escaped by format_html
        format_html("<figcaption>{}</figcaption>", caption) if caption else "",
    )


# --------------------------------------------------------------------------------------------
# Outcomes: what the recomputes did to each access's accrual
# --------------------------------------------------------------------------------------------


@dataclass
class OutcomeRow:
    access_id: int
    opportunity_id: int
    currency: str
    state: str
    before: int
    projected: int | None
    after: int | None
    before_original: int | None = None

    @property
    def change(self) -> int | None:
        return None if self.after is None else self.after - self.before

    @property
    def verdict(self) -> str:
        """'as projected' / 'differs' after an apply; 'restored' / 'differs' after an undo."""
        if self.after is None:
            return "pending"
        if self.before_original is not None:
            return "restored" if self.after == self.before_original else "differs"
        if self.projected is None:
            return ""
        return "as projected" if self.after == self.projected else "differs"


@dataclass
class OutcomeTotals:
    currency: str
    accesses: int = 0
    pending: int = 0
    before: int = 0
    projected: int = 0
    after: int = 0

    @property
    def change(self) -> int:
        return self.after - self.before


@dataclass
class Outcomes:
    rows: list[OutcomeRow]
    totals: list[OutcomeTotals]
    total_rows: int
    is_undo: bool

    @property
    def more(self) -> int:
        return self.total_rows - len(self.rows)


def _currencies(batch: CorrectionBatch, opportunity_ids) -> dict[int, str]:
    """Currency per opportunity: the plan's (or the reverted batch's plan's), else the host's."""
    codes: dict[int, str] = {}
    for source in (batch, batch.reverts):
        summary = getattr(source, "summary", None)
        if isinstance(summary, dict):
            for a in (summary.get("plan") or {}).get("accesses", []):
                codes.setdefault(a["opportunity_id"], a["currency"])
    missing = [pk for pk in opportunity_ids if pk not in codes]
    if missing:
        for pk, code in host.currency_codes(missing).items():
            codes[pk] = code or "?"
    return codes


def outcomes(batch: CorrectionBatch) -> Outcomes | None:
    recomputes = AccrualRecompute.objects.filter(batch=batch)
    grouped = list(
        recomputes.order_by()
        .values("opportunity_id")
        .annotate(
            n=Count("id"),
            pending=Count("id", filter=Q(state=RecomputeState.pending)),
            before=Sum("accrual_before"),
            projected=Sum("projected_after"),
            after=Sum("accrual_after"),
        )
    )
    if not grouped:
        return None
    codes = _currencies(batch, [g["opportunity_id"] for g in grouped])
    totals: dict[str, OutcomeTotals] = {}
    for g in grouped:
        t = totals.setdefault(codes.get(g["opportunity_id"], "?"), OutcomeTotals(currency=""))
        t.currency = codes.get(g["opportunity_id"], "?")
        t.accesses += g["n"]
        t.pending += g["pending"]
        t.before += g["before"] or 0
        t.projected += g["projected"] or 0
        t.after += g["after"] or 0
    is_undo = batch.reverts_id is not None
    before_original: dict[int, int] = {}
    shown = list(recomputes.order_by("access_id")[:ROWS_SHOWN])
    if is_undo:
        before_original = dict(
            AccrualRecompute.objects.filter(
                batch_id=batch.reverts_id, access_id__in=[r.access_id for r in shown]
            ).values_list("access_id", "accrual_before")
        )
    rows = [
        OutcomeRow(
            access_id=r.access_id,
            opportunity_id=r.opportunity_id,
            currency=codes.get(r.opportunity_id, "?"),
            state=r.state,
            before=r.accrual_before,
            projected=r.projected_after,
            after=r.accrual_after,
            before_original=before_original.get(r.access_id),
        )
        for r in shown
    ]
    return Outcomes(
        rows=rows,
        totals=[totals[c] for c in sorted(totals)],
        total_rows=sum(g["n"] for g in grouped),
        is_undo=is_undo,
    )


# --------------------------------------------------------------------------------------------
# Scope and conflicts, readable
# --------------------------------------------------------------------------------------------

SCOPE_LABELS = {
    "opportunities": "opportunities",
    "exclude_work_ids": "works excluded by the operator",
    "include_paid": "include paid works",
    "skip_suspended": "skip suspended accesses",
    "xform_ids": "xform ids listed",
    "visit_ids": "visit ids listed",
    "to_status": "target status",
    "expand": "expand to the works' other visits",
    "reverts": "reverts batch",
}


def scope_rows(scope, opportunity_link, batch_link) -> list[tuple[str, SafeString | str]]:
    """(label, value) pairs of a batch's scope, lists and flags spelled out."""
    if not isinstance(scope, dict):
        return [("scope", str(scope))]
    rows = []
    for key, value in scope.items():
        label = SCOPE_LABELS.get(key, key.replace("_", " "))
        if key == "opportunities" and isinstance(value, list):
            shown = format_html_join(", ", "{}", ((opportunity_link(v),) for v in value[:50]))
            extra = f" and {len(value) - 50} more" if len(value) > 50 else ""
            rows.append((label, format_html("{}{}", shown, extra)))
        elif key == "reverts":
            rows.append((label, batch_link(value)))
        elif isinstance(value, bool):
            rows.append((label, "yes" if value else "no"))
        elif isinstance(value, list):
            text = ", ".join(map(str, value[:50])) or "none"
            rows.append((label, text + (f" and {len(value) - 50} more" if len(value) > 50 else "")))
        else:
            rows.append((label, str(value)))
    return rows


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _access(access_id) -> tuple:
    from ledger.admin.base import events_url, link

    return link(events_url(access_id=access_id), access_id, title="this access's events"), ""


def plan_tables(view: PlanView) -> list[Table]:
    report, t = view.report, view.report.totals
    by_currency = Table(
        "Totals by currency",
        head("currency", "#accesses", "#works", "#visits", "#worker accrual Δ",
             "#org accrual Δ", "#paid to date", "#overpayment exposure"),
        [
            [text(c.currency), num(c.accesses), num(c.works), num(c.visits),
             delta(c.worker_accrual_change), delta(c.org_accrual_change),
             num(c.paid_to_date), num(c.overpayment_exposure)]
            for c in t.by_currency
        ],
        footer=[
            [("all currencies", ""), num(t.accesses), num(t.works), num(t.visits),
             (f"{usd(t.worker_accrual_change_usd)} USD", NUM),
             (f"{usd(t.org_accrual_change_usd)} USD", NUM), ("", ""), ("", "")]
        ],
        note=(
            f"Suspended accesses: {t.suspended_accesses}; works excluded: {t.excluded_works}. "
            "Accrual changes are in each currency's units; the last row converts them to USD."
        ),
    )  # fmt: skip
    by_opportunity = Table(
        "By opportunity",
        head("opportunity", "currency", "#accesses", "#works", "#visits", "#worker Δ",
             "#worker Δ USD", "#org Δ", "#org Δ USD"),
        [
            [text(format_html('{} <span class="quiet">#{}</span>', o.name, o.opportunity_id)),
             text(o.currency), num(o.accesses), num(o.works), num(o.visits), delta(o.worker),
             delta_usd(o.worker_usd), delta(o.org), delta_usd(o.org_usd)]
            for o in view.opportunities
        ],
    )  # fmt: skip
    per_access = Table(
        "Per access",
        head("access", "worker", "opportunity", "currency", "#works", "#visits",
             "#accrual now → projected", "#worker Δ", "#worker Δ USD", "#org Δ",
             "#org Δ USD", "#paid", "#exposure"),
        [
            [_access(a.access_id),
             text(format_html('{} <span class="ledger-tag">suspended</span>', a.worker)
                  if a.suspended else a.worker),
             text(view.names.get(a.opportunity_id, a.opportunity)), text(a.currency),
             num(a.works), num(a.visits),
             (f"{amount(a.accrual_now)} → {amount(a.projected_accrual)}", NUM),
             delta(a.worker_accrual_change),
             delta_usd(a.worker_accrual_change_usd), delta(a.org_accrual_change),
             delta_usd(a.org_accrual_change_usd), num(a.paid_to_date),
             num(a.overpayment_exposure) if a.overpayment_exposure else text("")]
            for a in view.accesses_shown
        ],
        note=(
            f"The first {len(view.accesses_shown)} of {len(report.accesses)} accesses; "
            "corrections show --batch lists them all."
            if view.more_accesses
            else ""
        ),
        css="wide",
    )  # fmt: skip
    tables = [by_currency, by_opportunity, per_access]
    if report.exclusions:
        tables.append(
            Table(
                "Excluded (not flipped)",
                head("reason", "#works", "#visits", "completed works"),
                [
                    [
                        text(view.exclusion_label(e.reason)),
                        num(e.works),
                        num(e.visits),
                        text(
                            ", ".join(map(str, e.completed_work_ids[:20]))
                            + (
                                f" … ({len(e.completed_work_ids)})"
                                if len(e.completed_work_ids) > 20
                                else ""
                            )
                        ),
                    ]
                    for e in report.exclusions
                ],
            )  # fmt: skip
        )
    return tables


def outcome_tables(result: Outcomes) -> list[Table]:
    if result.is_undo:
        compare = ("#before the batch", "back where it was")
    else:
        compare = ("#projected", "as projected")
    totals = Table(
        "Totals by currency",
        head("currency", "#accesses", "#pending", "#accrual before", compare[0],
             "#accrual after", "#change"),
        [
            [text(t.currency), num(t.accesses), num(t.pending), num(t.before),
             num(t.projected) if not result.is_undo else text(""), num(t.after),
             delta(t.change)]
            for t in result.totals
        ],
    )  # fmt: skip
    rows = Table(
        "Per access",
        head("access", "opportunity", "currency", "state", "#accrual before", compare[0],
             "#accrual after", "#change", compare[1]),
        [
            [_access(r.access_id), text(r.opportunity_id), text(r.currency), text(r.state),
             num(r.before),
             num(r.before_original if result.is_undo else r.projected),
             num(r.after), delta(r.change),
             (r.verdict, "verdict " + r.verdict.replace(" ", "-"))]
            for r in result.rows
        ],
        note=(
            f"The first {len(result.rows)} of {result.total_rows} accesses."
            if result.more
            else ""
        ),
    )  # fmt: skip
    return [totals, rows]
