"""Events: a compact list (operator, reason and undo lineage on every row) and an event page
with the entity's whole timeline, where each undo of the batch stands: inverted it, or skipped
it and why."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Exists, OuterRef
from django.utils.html import format_html

from ledger.admin import plan as tables
from ledger.admin.base import (
    DASH,
    ReadOnlyAdmin,
    admin_url,
    batch_link,
    entity_events_url,
    entity_link,
    event_link,
    events_url,
    state_badge,
    truncated,
    when,
)
from ledger.admin.lookups import (
    AccessFilter,
    BatchFilter,
    CompletedWorkFilter,
    OpportunityFilter,
    VisitFilter,
    choice_filter,
)
from ledger.admin.search import event_search
from ledger.host import CompletedWorkStatus, Opportunity, VisitValidationStatus
from ledger.models import CorrectionBatch, CorrectionEvent, EntityKind

TIMELINE_EVENTS = 50
STATUS_CHOICES = [
    (s, s) for s in sorted({*VisitValidationStatus.values, *CompletedWorkStatus.values})
]

EntityKindFilter = choice_filter("entity kind", "entity_kind", "entity_kind", EntityKind.choices)
FromStatusFilter = choice_filter(
    "from status", "from_status", "from_status", STATUS_CHOICES, narrows=True
)
ToStatusFilter = choice_filter("to status", "to_status", "to_status", STATUS_CHOICES, narrows=True)


def lineage_note(event, *, batch_undone: bool) -> str:
    """One line of undo lineage for a list row."""
    inverted = getattr(event, "inverted_by", None)
    if inverted is not None:
        return format_html("undone by {}", event_link(inverted.pk))
    if event.inverts_id:
        return format_html("inverts {}", event_link(event.inverts_id))
    if batch_undone:
        return format_html(
            '<span class="ledger-note" title="{}">skipped by undo</span>',
            "The batch was undone but this unit was skipped as a conflict: still in effect.",
        )
    return ""


@admin.register(CorrectionEvent)
class CorrectionEventAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "recorded",
        "batch_column",
        "entity",
        "change",
        "operator",
        "reason_column",
        "lineage",
        "where",
    )
    list_display_links = ("id",)
    list_filter = (
        BatchFilter,
        VisitFilter,
        CompletedWorkFilter,
        OpportunityFilter,
        AccessFilter,
        EntityKindFilter,
        FromStatusFilter,
        ToStatusFilter,
    )
    list_select_related = ("batch", "inverted_by")
    sortable_by = ("id", "recorded")
    ordering = ("-id",)
    search_columns = ("entity_kind", "xform_id", "batch_id")
    search_help_text = (
        "Exact: a visit or completed work id, an xform id, or a batch id (or its first 8 "
        "characters)."
    )
    change_form_template = "admin/ledger/correctionevent/change_form.html"
    fields = ("reason",)

    def get_queryset(self, request):
        undone = CorrectionBatch.objects.filter(reverts_id=OuterRef("batch_id"), state="applied")
        return super().get_queryset(request).annotate(batch_has_undo=Exists(undone))

    def get_search_results(self, request, queryset, search_term):
        q = event_search(search_term)
        return (queryset if q is None else queryset.filter(q)), False

    # List columns -----------------------------------------------------------------------------

    @admin.display(description="recorded", ordering="recorded_at")
    def recorded(self, obj):
        return when(obj.recorded_at)

    @admin.display(description="batch")
    def batch_column(self, obj):
        return batch_link(obj.batch_id)

    @admin.display(description="entity")
    def entity(self, obj):
        return entity_link(obj.entity_kind, obj.entity_id)

    @admin.display(description="from → to")
    def change(self, obj):
        return format_html("{}&nbsp;→ {}", obj.from_status, obj.to_status)

    @admin.display(description="applied by")
    def operator(self, obj):
        return obj.batch.applied_by or DASH

    @admin.display(description="reason")
    def reason_column(self, obj):
        return truncated(obj.reason, 40)

    @admin.display(description="undo lineage")
    def lineage(self, obj):
        skipped = getattr(obj, "batch_has_undo", False) and obj.batch.reverts_id is None
        return lineage_note(obj, batch_undone=skipped) or DASH

    @admin.display(description="opp. · access")
    def where(self, obj):
        opportunity = format_html(
            '<a href="{}" title="events of opportunity {}">{}</a>',
            events_url(opportunity_id=obj.opportunity_id),
            obj.opportunity_id,
            obj.opportunity_id,
        )
        if obj.access_id is None:
            return opportunity
        return format_html(
            '{} · <a href="{}" title="events of access {}">{}</a>',
            opportunity,
            events_url(access_id=obj.access_id),
            obj.access_id,
            obj.access_id,
        )

    # The event page ---------------------------------------------------------------------------

    def object_tools(self, request, obj):
        kind = "visit" if obj.entity_kind == EntityKind.visit else "work"
        yield f"All events of this {kind}", entity_events_url(obj.entity_kind, obj.entity_id)
        yield "Batch", admin_url("admin:ledger_correctionbatch_change", obj.batch_id)
        yield "Events of the batch", events_url(batch__id__exact=obj.batch_id)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        event = self.get_object(request, object_id)
        if event is not None:
            extra_context = {**(extra_context or {}), **event_page(event)}
        return super().change_view(request, object_id, form_url, extra_context)


def _conflicts_about(undo_conflicts, event) -> list[str]:
    """The conflicts an undo recorded for this event's entity or its unit (work and visits)."""
    found = []
    for c in undo_conflicts if isinstance(undo_conflicts, list) else []:
        if not isinstance(c, dict):
            continue
        same_entity = (
            c.get("entity_kind") == event.entity_kind and c.get("entity_id") == event.entity_id
        )
        same_unit = event.completed_work_id is not None and c.get("completed_work_id") == (
            event.completed_work_id
        )
        if same_entity or same_unit:
            kind = "visit" if c.get("entity_kind") == "visit" else "work"
            expected = c.get("expected") or c.get("expected_status")
            got = c.get("found") or c.get("found_status")
            found.append(
                f"{kind} {c.get('entity_id')}: {c.get('what', 'status')} expected {expected}, "
                f"found {got}"
            )
    return found


def undo_notes(event, inverted) -> list:
    """How each undo of the event's batch treated it: inverted (by ``inverted``, the undo's
    event, if any), or skipped, and why."""
    batch = event.batch
    if batch.reverts_id is not None:
        return []
    notes = []
    undos = CorrectionBatch.objects.filter(reverts_id=batch.pk, state="applied")
    for undo in undos.order_by("created_at"):
        if inverted is not None and inverted.batch_id == undo.pk:
            notes.append(
                format_html(
                    "Undone by {} in undo batch {} ({}, {}): {}",
                    event_link(inverted.pk),
                    batch_link(undo.pk),
                    undo.applied_by or DASH,
                    when(undo.applied_at),
                    undo.reason,
                )
            )
            break
        why = _conflicts_about(undo.skipped_conflicts, event)
        notes.append(
            format_html(
                '<span class="ledger-note">Skipped by undo batch {} ({}, {})</span>: {} {}',
                batch_link(undo.pk),
                undo.applied_by or DASH,
                when(undo.applied_at),
                "its unit conflicted, so the undo left it as it was —",
                "; ".join(why) if why else "the conflict named another entity of its unit",
            )
        )
    if notes and inverted is None:
        notes.append(
            format_html(
                "This flip is still in effect: batch {} is {}.",
                batch_link(batch.pk),
                batch.get_state_display().lower(),
            )
        )
    return notes


def _members(text: str | None) -> list[tuple[str, str]]:
    pairs = []
    for part in (text or "").split(","):
        if ":" in part:
            visit, status = part.split(":", 1)
            pairs.append((visit.strip(), status.strip()))
    return pairs


def event_page(event: CorrectionEvent) -> dict:
    batch = event.batch
    inverted = CorrectionEvent.objects.filter(inverts_id=event.pk).first()
    timeline = list(
        CorrectionEvent.objects.filter(entity_kind=event.entity_kind, entity_id=event.entity_id)
        .select_related("batch", "inverted_by")
        .order_by("id")[: TIMELINE_EVENTS + 1]
    )
    previous = event.prev_event_id
    if previous is None and event.hash_format == 1:
        previous = (
            CorrectionEvent.objects.filter(
                entity_kind=event.entity_kind, entity_id=event.entity_id, id__lt=event.pk
            )
            .order_by("-id")
            .values_list("id", flat=True)
            .first()
        )
    following = (
        CorrectionEvent.objects.filter(
            entity_kind=event.entity_kind, entity_id=event.entity_id, id__gt=event.pk
        )
        .order_by("id")
        .values_list("id", flat=True)
        .first()
    )
    opportunity = (
        Opportunity.objects.filter(pk=event.opportunity_id)
        .values_list("name", "opportunity_id")
        .first()
    )
    undo_batches = set(
        CorrectionBatch.objects.filter(
            reverts_id__in={e.batch_id for e in timeline}, state="applied"
        ).values_list("reverts_id", flat=True)
    )
    timeline_rows = [
        [
            (event_link(e.pk) if e.pk != event.pk else format_html("<b>#{}</b>", e.pk), ""),
            (when(e.recorded_at), "nowrap"),
            (batch_link(e.batch_id), ""),
            (e.batch.planner, ""),
            (format_html("{} → {}", e.from_status, e.to_status), "nowrap"),
            (e.batch.applied_by or DASH, ""),
            (truncated(e.reason, 40), ""),
            (lineage_note(e, batch_undone=e.batch_id in undo_batches and not e.batch.reverts_id)
             or DASH, ""),
        ]
        for e in timeline[:TIMELINE_EVENTS]
    ]  # fmt: skip
    kind = "visit" if event.entity_kind == EntityKind.visit else "completed work"
    members = _members(event.members)
    return {
        "event": event,
        "summary": [
            ("event", format_html("#{} — {}", event.pk, when(event.recorded_at))),
            ("batch", format_html(
                "{} {} {}", batch_link(batch.pk, full=True), state_badge(batch.state),
                batch.get_planner_display())),
            ("reason", batch.reason if batch.reason == event.reason else event.reason),
            ("ticket", batch.ticket or DASH),
            ("planned by", batch.planned_by),
            ("approved by", format_html("{} {}", batch.approved_by or DASH,
                                        when(batch.approved_at) if batch.approved_at else "")),
            ("applied by", format_html("{} {}", batch.applied_by or DASH,
                                       when(batch.applied_at) if batch.applied_at else "")),
        ],
        "entity": [
            (kind, entity_link(event.entity_kind, event.entity_id)),
            *([("completed work", entity_link("completed_work", event.completed_work_id)
                if event.completed_work_id else DASH)]
              if event.entity_kind == EntityKind.visit else []),
            ("xform id", event.xform_id or DASH),
            ("opportunity", format_html(
                '<a href="{}">{}</a> <span class="quiet">#{} {}</span>',
                events_url(opportunity_id=event.opportunity_id),
                opportunity[0] if opportunity else "(gone from the host)",
                event.opportunity_id, opportunity[1] if opportunity else "")),
            ("access", format_html('<a href="{}">{}</a>', events_url(access_id=event.access_id),
                                   event.access_id) if event.access_id else DASH),
            ("status", format_html("<b>{}</b> → <b>{}</b>", event.from_status, event.to_status)),
            ("status modified", format_html("{} → {}", when(event.prior_status_modified_date),
                                            when(event.new_status_modified_date))),
        ],
        "lineage": [
            *([format_html("Inverts {} of batch {} (the event this undo reverses).",
                           event_link(event.inverts_id),
                           batch_link(batch.reverts_id))] if event.inverts_id else []),
            *undo_notes(event, inverted),
            format_html("Previous event of this {}: {}. Next: {}.", kind,
                        event_link(previous) if previous else "none (its first)",
                        event_link(following) if following else "none (its latest)"),
        ],
        "timeline": tables.Table(
            f"Every event of this {kind}",
            tables.head("event", "recorded", "batch", "planner", "from → to", "applied by",
                        "reason", "undo lineage"),
            timeline_rows,
            note=(format_html('The first {}: <a href="{}">all of them</a>.', TIMELINE_EVENTS,
                              entity_events_url(event.entity_kind, event.entity_id))
                  if len(timeline) > TIMELINE_EVENTS else ""),
        ),
        "members": tables.Table(
            "The work's visits after this flip",
            tables.head("visit", "status"),
            [[(entity_link("visit", v), ""), (s, "")] for v, s in members],
        ) if members else None,
        "chain": [
            ("hash format", str(event.hash_format)),
            ("previous hash", format_html("<code>{}</code>", event.prev_hash)),
            ("hash", format_html("<code>{}</code>", event.hash)),
        ],
    }  # fmt: skip
