"""Batches: a compact list, and a page with the lifecycle, the priced plan, the outcomes,
lineage, scope, conflicts and the first events."""

from __future__ import annotations

import json

from django.contrib import admin
from django.db.models import Count, OuterRef, Q, Subquery
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from ledger import selectors
from ledger.admin import plan as plan_tables
from ledger.admin.base import (
    DASH,
    ReadOnlyAdmin,
    admin_url,
    batch_link,
    entity_link,
    event_link,
    events_url,
    short_id,
    stamp,
    state_badge,
    when,
)
from ledger.admin.lookups import choice_filter
from ledger.admin.search import any_of, uuid_condition
from ledger.models import (
    AccrualRecompute,
    BatchEntry,
    BatchState,
    CorrectionBatch,
    CorrectionEvent,
    EntityKind,
    PlannedChange,
    Planner,
    RecomputeState,
)

EVENTS_ON_BATCH_PAGE = 50

BatchStateFilter = choice_filter("state", "state", "state", BatchState.choices)
# Offered once an index leads with the column (see docs/admin.md).
PlannerFilter = choice_filter("planner", "planner", "planner", Planner.choices)


def _opportunity_link(value):
    return format_html(
        '<a href="{}" class="ledger-id" title="{}">{}</a>',
        events_url(opportunity_id=value),
        f"events of opportunity {value}",
        short_id(value),
    )


@admin.register(CorrectionBatch)
class CorrectionBatchAdmin(ReadOnlyAdmin):
    list_display = (
        "short",
        "planner",
        "state_column",
        "reason_column",
        "people",
        "created",
        "applied",
        "lineage",
    )
    list_display_links = ("short",)
    list_filter = (BatchStateFilter, PlannerFilter)
    sortable_by = ("created",)
    ordering = ("-created_at",)
    search_columns = ("id",)  # and ticket, once an index leads with it
    change_form_template = "admin/ledger/correctionbatch/change_form.html"
    fields = ("reason",)  # the page is its own template; the form is never shown

    @property
    def search_help_text(self):
        ticket = " or a ticket" if self._ticket_indexed() else ""
        return f"A batch id (or its first 8 characters){ticket}, exactly."

    def get_queryset(self, request):
        undos = CorrectionBatch.objects.filter(reverts=OuterRef("pk")).order_by("-created_at")
        return (
            super()
            .get_queryset(request)
            .annotate(
                latest_undo=Subquery(undos.filter(state=BatchState.applied).values("id")[:1]),
                planned_undo=Subquery(undos.filter(state=BatchState.planned).values("id")[:1]),
            )
        )

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        ticket = Q(ticket=term) if self._ticket_indexed() else None
        q = any_of(uuid_condition("id", term), ticket)
        return (queryset.filter(q) if q is not None else queryset.none()), False

    @staticmethod
    def _ticket_indexed() -> bool:
        from ledger.admin.lookups import leading_indexes

        return bool(leading_indexes(CorrectionBatch, "ticket"))

    # List columns -----------------------------------------------------------------------------

    @admin.display(description="batch", ordering="created_at")
    def short(self, obj):
        return format_html('<span class="ledger-id" title="{}">{}</span>', obj.pk, short_id(obj.pk))

    @admin.display(description="state")
    def state_column(self, obj):
        closed = obj.undone_at or obj.discarded_at
        if closed is None:
            return state_badge(obj.state)
        return format_html(
            '<span title="{} {}">{}</span>',
            obj.get_state_display(),
            stamp(closed),
            state_badge(obj.state),
        )

    @admin.display(description="planned · approved · applied by")
    def people(self, obj):
        return format_html(
            "{} · {} · {}", obj.planned_by, obj.approved_by or DASH, obj.applied_by or DASH
        )

    @admin.display(description="ticket · reason")
    def reason_column(self, obj):
        if obj.ticket:
            return format_html(
                '<b class="ledger-ticket">{}</b> <span title="{}">{}</span>',
                obj.ticket,
                obj.reason,
                obj.reason,
            )
        return format_html('<span title="{}">{}</span>', obj.reason, obj.reason)

    @admin.display(description="created", ordering="created_at")
    def created(self, obj):
        return when(obj.created_at)

    @admin.display(description="applied")
    def applied(self, obj):
        """The time alone when it was applied the day it was planned."""
        if obj.applied_at is None or stamp(obj.applied_at)[:10] != stamp(obj.created_at)[:10]:
            return when(obj.applied_at)
        return format_html(
            '<time datetime="{}" title="{}">{}</time>',
            obj.applied_at.isoformat(),
            stamp(obj.applied_at),
            stamp(obj.applied_at)[11:],
        )

    @admin.display(description="lineage")
    def lineage(self, obj):
        parts = []
        if obj.reverts_id:
            parts.append(format_html("reverts {}", batch_link(obj.reverts_id)))
        latest = getattr(obj, "latest_undo", None)
        if latest:
            parts.append(format_html("undone by {}", batch_link(latest)))
        planned = getattr(obj, "planned_undo", None)
        if planned:
            parts.append(format_html("undo planned: {}", batch_link(planned)))
        if not parts:
            return DASH
        return format_html("{}", format_html(" · ".join(["{}"] * len(parts)), *parts))

    # The batch page ---------------------------------------------------------------------------

    def object_tools(self, request, obj):
        yield "Events", events_url(batch__id__exact=obj.pk)
        yield (
            "Planned changes",
            admin_url("admin:ledger_plannedchange_changelist", query={"batch__id__exact": obj.pk}),
        )
        yield (
            "Recomputes",
            admin_url(
                "admin:ledger_accrualrecompute_changelist", query={"batch__id__exact": obj.pk}
            ),
        )
        yield (
            "Lifecycle entries",
            admin_url("admin:ledger_batchentry_changelist", query={"batch__id__exact": obj.pk}),
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        batch = self.get_object(request, object_id)
        if batch is not None:
            extra_context = {**(extra_context or {}), **batch_page(batch)}
        return super().change_view(request, object_id, form_url, extra_context)


def _recomputes(batch: CorrectionBatch, row: selectors.BatchRow):
    """Recompute progress (done, pending, queued, busy, failed), linked to the rows, and the
    latest problem recorded on a pending one."""
    text = format_html(
        '<a href="{}">{}</a>',
        admin_url("admin:ledger_accrualrecompute_changelist", query={"batch__id__exact": batch.pk}),
        selectors.describe_recomputes(row),
    )
    if row.recomputes_pending:
        last = (
            AccrualRecompute.objects.filter(batch=batch, state=RecomputeState.pending)
            .exclude(last_error="")
            .order_by("-last_tried_at")
            .values_list("access_id", "last_error")
            .first()
        )
        if last:
            text = format_html("{}; last problem (access {}): {}", text, *last)
    return text


def _details(text: str) -> list[tuple[str, str]]:
    """A lifecycle entry's canonical JSON as short (key, value) pairs."""
    try:
        value = json.loads(text)
    except ValueError:
        return [("details", text)]
    if not isinstance(value, dict):
        return [("details", str(value))]
    pairs = []
    for key, item in value.items():
        if key in ("scope", "reason", "ticket", "planner"):
            continue  # shown with the batch
        if isinstance(item, dict | list):
            item = json.dumps(item, sort_keys=True)
        full = "—" if item is None else str(item)
        shown = full
        if len(full) == 64:
            shown = full[:12] + "…"  # a digest or a hash
        elif len(full) == 36 and full.count("-") == 4:
            shown = full[:8]  # a batch id
        elif len(full) > 60:
            shown = full[:59] + "…"
        pairs.append(
            (key.replace("_", " "), format_html('<span title="{}">{}</span>', full, shown))
        )
    return pairs


def _planned_counts(batch) -> dict:
    counts = {"visits": 0, "works": 0, "excluded": []}
    excluded: dict[str, list[int]] = {}
    for kind, why, n in (
        PlannedChange.objects.filter(batch=batch)
        .order_by()
        .values_list("entity_kind", "excluded")
        .annotate(n=Count("id"))
    ):
        slot = 1 if kind == EntityKind.visit else 0
        if why:
            excluded.setdefault(why, [0, 0])[slot] += n
        else:
            counts["visits" if slot else "works"] += n
    counts["excluded"] = sorted(excluded.items())
    return counts


def _conflicts(batch) -> list[dict]:
    conflicts = batch.skipped_conflicts if isinstance(batch.skipped_conflicts, list) else []
    rows = []
    for c in conflicts[:200]:
        if not isinstance(c, dict):
            rows.append({"text": str(c)})
            continue
        rows.append(
            {
                "entity": entity_link(c.get("entity_kind", ""), c.get("entity_id")),
                "what": c.get("what", "status"),
                "expected": c.get("expected") or c.get("expected_status"),
                "found": c.get("found") or c.get("found_status"),
                "owner": batch_link(c["owner_batch"]) if c.get("owner_batch") else "",
            }
        )
    return rows


def _header(batch: CorrectionBatch, row: selectors.BatchRow, undos: list[dict]) -> list:
    """(label, value) pairs at the top of the batch page."""
    lineage = []
    if batch.reverts_id:
        lineage.append(format_html("reverts {}", batch_link(batch.reverts_id, full=True)))
    for undo in undos:
        if undo["state"] != BatchState.applied:  # an undo planned, or planned and discarded
            lineage.append(
                format_html("undo {}: {}", undo["state"], batch_link(undo["id"], full=True))
            )
            continue
        lineage.append(
            format_html(
                "undone by {} ({}, {} events, {} skipped)",
                batch_link(undo["id"], full=True),
                undo["applied_by"] or "—",
                undo["events"],
                undo["skipped"],
            )
        )
    return [
        ("batch", format_html('<span class="ledger-id">{}</span>', batch.pk)),
        ("state", state_badge(batch.state)),
        ("planner", batch.get_planner_display()),
        ("reason", batch.reason),
        ("ticket", batch.ticket or DASH),
        ("plan digest", format_html('<code>{}</code>', batch.plan_digest)),
        ("lineage", format_html_join(mark_safe("<br>"), "{}", ((x,) for x in lineage))
         if lineage else DASH),
        ("events", format_html(
            '<a href="{}">{} events</a>: {} visits, {} completed works, {} accesses',
            events_url(batch__id__exact=batch.pk), row.events, row.visits, row.works,
            row.accesses)),
        ("accrual recomputes", _recomputes(batch, row)),
    ]  # fmt: skip


def _lifecycle(batch: CorrectionBatch) -> list[dict]:
    """The batch's chained lifecycle entries; for batches older than them, its columns."""
    entries = [
        {
            "action": e.get_action_display(),
            "actor": e.actor,
            "at": when(e.at),
            "details": _details(e.details),
            "hash": e.hash,
        }
        for e in BatchEntry.objects.filter(batch=batch).order_by("id")
    ]
    if entries:
        return entries
    steps = [
        ("Planned", batch.planned_by, batch.created_at),
        ("Approved", batch.approved_by, batch.approved_at),
        ("Applied", batch.applied_by, batch.applied_at),
        ("Undone", "", batch.undone_at),
        ("Discarded", "", batch.discarded_at),
    ]
    return [
        {"action": action, "actor": actor or DASH, "at": when(at), "details": [], "hash": ""}
        for action, actor, at in steps
        if at is not None
    ]


def batch_page(batch: CorrectionBatch) -> dict:
    """Everything the batch page shows, each read through an index of its table."""
    row = selectors.batch_row(batch.pk)
    undos = list(
        CorrectionBatch.objects.filter(reverts=batch)
        .order_by("created_at")
        .annotate(n_events=Count("events"))
        .values("id", "state", "applied_by", "applied_at", "n_events", "skipped_conflicts")
    )
    for undo in undos:
        skipped = undo.pop("skipped_conflicts")
        undo["skipped"] = len(skipped) if isinstance(skipped, list) else 0
        undo["events"] = undo.pop("n_events")
    events = CorrectionEvent.objects.filter(batch=batch)
    first = events.order_by("id").values_list("id", "prev_hash").first()
    last = events.order_by("-id").values_list("id", "hash").first()
    shown = list(
        events.order_by("id")
        .select_related("inverted_by")
        .only(
            "id", "recorded_at", "entity_kind", "entity_id", "xform_id", "from_status",
            "to_status", "inverts_id", "inverted_by__id", "inverted_by__batch_id",
        )[:EVENTS_ON_BATCH_PAGE]
    )  # fmt: skip
    plan = plan_tables.plan_view(batch)
    outcomes = plan_tables.outcomes(batch)
    partially = batch.state == BatchState.partially_undone
    event_rows = []
    for e in shown:
        inverted = getattr(e, "inverted_by", None)
        if inverted is not None:
            lineage = format_html("undone by {}", event_link(inverted.pk))
        elif e.inverts_id:
            lineage = format_html("inverts {}", event_link(e.inverts_id))
        elif partially:
            lineage = mark_safe('<span class="ledger-note">skipped by the undo</span>')
        else:
            lineage = ""
        event_rows.append(
            [
                (event_link(e.pk), ""),
                (when(e.recorded_at), "nowrap"),
                (entity_link(e.entity_kind, e.entity_id), "nowrap"),
                (e.xform_id or "", "ledger-id"),
                (format_html("{} → {}", e.from_status, e.to_status), "nowrap"),
                (lineage, ""),
            ]
        )
    events_table = plan_tables.Table(
        f"The first {EVENTS_ON_BATCH_PAGE}" if row.events > EVENTS_ON_BATCH_PAGE else "",
        plan_tables.head("event", "recorded", "entity", "xform id", "from → to", "lineage"),
        event_rows,
        note=(
            format_html('{} of {} — <a href="{}">all events</a>', len(shown), row.events,
                        events_url(batch__id__exact=batch.pk))
            if row.events > len(shown) else ""
        ),
    )  # fmt: skip
    conflicts = _conflicts(batch)
    conflicts_table = plan_tables.Table(
        "Skipped conflicts",
        plan_tables.head("entity", "what differed", "expected", "found", "owned by batch"),
        [
            [(c.get("entity", c.get("text", "")), ""), (c.get("what", ""), ""),
             (c.get("expected") or "—", ""), (c.get("found") or "—", ""),
             (c.get("owner", ""), "")]
            for c in conflicts
        ],
        note="Units left as they were: the batch did not flip them.",
    )  # fmt: skip
    planned = _planned_counts(batch)
    return {
        "header": _header(batch, row, undos),
        "lifecycle": _lifecycle(batch),
        "planned": planned,
        "planned_url": admin_url(
            "admin:ledger_plannedchange_changelist", query={"batch__id__exact": batch.pk}
        ),
        "plan": plan,
        "plan_tables": plan_tables.plan_tables(plan) if plan else [],
        "plan_notes": (
            plan.report.notes
            + [f"Listed more than once (planned once): {', '.join(plan.report.duplicate_entries)}"]
            if plan.report.duplicate_entries
            else plan.report.notes
        )
        if plan
        else [],
        "chart": plan_tables.accrual_chart(plan.opportunities) if plan else "",
        "outcome_tables": plan_tables.outcome_tables(outcomes) if outcomes else [],
        "scope_rows": plan_tables.scope_rows(batch.scope, _opportunity_link, batch_link),
        "conflicts_table": conflicts_table if conflicts else None,
        "events_table": events_table,
        "anchors": {
            "first_id": first[0] if first else None,
            "first_prev_hash": first[1] if first else None,
            "last_id": last[0] if last else None,
            "last_hash": last[1] if last else None,
        },
    }
