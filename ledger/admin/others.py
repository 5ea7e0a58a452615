"""Planned changes, accrual recomputes and batch lifecycle entries: compact, linked lists."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Q
from django.utils.html import format_html

from ledger.admin.base import (
    DASH,
    ReadOnlyAdmin,
    batch_link,
    entity_link,
    events_url,
    when,
)
from ledger.admin.lookups import (
    AccessFilter,
    BatchFilter,
    ChoiceFilter,
    NarrowingOpportunityFilter,
    choice_filter,
    partial_index,
)
from ledger.admin.plan import amount
from ledger.admin.search import any_of, entity_condition, uuid_condition
from ledger.models import (
    AccrualRecompute,
    BatchAction,
    BatchEntry,
    EntityKind,
    ExclusionReason,
    PlannedChange,
    RecomputeState,
)

PlannedKindFilter = choice_filter("entity kind", "entity_kind", "entity_kind", EntityKind.choices)


class ExcludedFilter(ChoiceFilter):
    title = "excluded"
    parameter_name = "excluded"
    column_name = "excluded"
    columns = ("excluded",)
    narrows = True

    def lookups(self):
        return [("none", "flipped (not excluded)"), *ExclusionReason.choices]

    def condition(self, value):
        return Q(excluded="") if value == "none" else super().condition(value)


SuspendedFilter = choice_filter(
    "suspended access", "suspended", "suspended", [("True", "yes"), ("False", "no")], narrows=True
)


def _access_link(access_id):
    if access_id is None:
        return DASH
    return format_html(
        '<a href="{}" title="events of access {}">{}</a>',
        events_url(access_id=access_id),
        access_id,
        access_id,
    )


def _opportunity_link(opportunity_id):
    return format_html(
        '<a href="{}" title="events of opportunity {}">{}</a>',
        events_url(opportunity_id=opportunity_id),
        opportunity_id,
        opportunity_id,
    )


@admin.register(PlannedChange)
class PlannedChangeAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "batch_column",
        "entity",
        "work",
        "change",
        "excluded_column",
        "suspended",
        "opportunity",
        "access",
    )
    list_filter = (
        BatchFilter,
        PlannedKindFilter,
        ExcludedFilter,
        SuspendedFilter,
        NarrowingOpportunityFilter,
    )
    sortable_by = ("id",)
    ordering = ("-id",)
    search_columns = ("entity_kind", "batch_id")
    search_help_text = "Exact: a visit or completed work id, or a batch id (or its first 8)."
    readonly_fields = ("batch_column", "entity", "work", "change", "excluded_column")
    fields = (
        "id",
        "batch_column",
        "entity",
        "work",
        "xform_id",
        "change",
        "excluded_column",
        "suspended",
        "opportunity_id",
        "access_id",
        "prev_event_id",
        "members",
    )

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        q = any_of(entity_condition(term), uuid_condition("batch_id", term)) if term else None
        if term and q is None:
            return queryset.none(), False
        return (queryset if q is None else queryset.filter(q)), False

    @admin.display(description="batch")
    def batch_column(self, obj):
        return batch_link(obj.batch_id)

    @admin.display(description="entity")
    def entity(self, obj):
        return entity_link(obj.entity_kind, obj.entity_id)

    @admin.display(description="work")
    def work(self, obj):
        if obj.completed_work_id is None:
            return DASH
        return entity_link("completed_work", obj.completed_work_id)

    @admin.display(description="from → to")
    def change(self, obj):
        return format_html("{}&nbsp;→ {}", obj.from_status, obj.to_status)

    @admin.display(description="excluded")
    def excluded_column(self, obj):
        return obj.get_excluded_display() if obj.excluded else DASH

    @admin.display(description="opp.")
    def opportunity(self, obj):
        return _opportunity_link(obj.opportunity_id)

    @admin.display(description="access")
    def access(self, obj):
        return _access_link(obj.access_id)


class RecomputeStateFilter(ChoiceFilter):
    """``pending`` reads the partial index of pending rows; ``done`` narrows a selection."""

    title = "state"
    parameter_name = "state"
    column_name = "state"
    columns = ("state",)
    narrows = False
    index = "ledger_recompute_pending"

    def lookups(self):
        return list(RecomputeState.choices)

    @classmethod
    def offered(cls, model):
        return partial_index(model, cls.index) is not None

    @classmethod
    def indexes(cls, model):
        return [cls.index]

    @classmethod
    def indexed_for(cls, value):
        return value == RecomputeState.pending


@admin.register(AccrualRecompute)
class AccrualRecomputeAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "batch_column",
        "access",
        "opportunity",
        "state",
        "before",
        "projected",
        "after",
        "change",
        "created",
        "done",
    )
    list_filter = (BatchFilter, AccessFilter, RecomputeStateFilter, NarrowingOpportunityFilter)
    sortable_by = ("id",)
    ordering = ("-id",)
    fields = (
        "id",
        "batch_column",
        "access",
        "opportunity",
        "state",
        "before",
        "projected",
        "after",
        "change",
        "created",
        "done",
        "attempts",
        "last_problem",
        "last_error",
        "last_tried_at",
        "queued_at",
    )
    readonly_fields = fields

    @admin.display(description="batch")
    def batch_column(self, obj):
        return batch_link(obj.batch_id)

    @admin.display(description="access")
    def access(self, obj):
        return _access_link(obj.access_id)

    @admin.display(description="opp.")
    def opportunity(self, obj):
        return _opportunity_link(obj.opportunity_id)

    @admin.display(description="accrual before")
    def before(self, obj):
        return amount(obj.accrual_before)

    @admin.display(description="projected")
    def projected(self, obj):
        return amount(obj.projected_after)

    @admin.display(description="after")
    def after(self, obj):
        return amount(obj.accrual_after)

    @admin.display(description="change")
    def change(self, obj):
        if obj.accrual_after is None:
            return DASH
        return amount(obj.accrual_after - obj.accrual_before, signed=True)

    @admin.display(description="created")
    def created(self, obj):
        return when(obj.created_at)

    @admin.display(description="done")
    def done(self, obj):
        return when(obj.done_at)


ActionFilter = choice_filter("step", "action", "action", BatchAction.choices, narrows=True)


@admin.register(BatchEntry)
class BatchEntryAdmin(ReadOnlyAdmin):
    list_display = ("id", "batch_column", "action", "actor", "at_column", "details_column")
    list_filter = (BatchFilter, ActionFilter)
    sortable_by = ("id",)
    ordering = ("-id",)
    fields = (
        "id",
        "batch_column",
        "action",
        "actor",
        "actor_id",
        "at_column",
        "details",
        "hash_format",
        "prev_hash",
        "hash",
    )
    readonly_fields = ("batch_column", "at_column")

    @admin.display(description="batch")
    def batch_column(self, obj):
        return batch_link(obj.batch_id)

    @admin.display(description="at")
    def at_column(self, obj):
        return when(obj.at)

    @admin.display(description="details")
    def details_column(self, obj):
        text = obj.details or ""
        shown = text if len(text) <= 90 else text[:89] + "…"
        return format_html('<code title="{}">{}</code>', text, shown)
