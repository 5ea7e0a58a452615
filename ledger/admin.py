"""A read-only Django admin over the ledger: batches, their planned changes, events, recomputes.

Nobody edits the ledger here — add, change and delete are refused to everyone, superusers
included (the database refuses them too); staff with the ``view`` permission can look.

Event lists stay fast on millions of rows:

* no full-table counts: ``show_full_result_count = False`` and :class:`EstimatedCountPaginator`
  (the planner's row estimate for the unfiltered list, exact counts up to 10 000 for filtered
  ones, the planner's estimate beyond);
* filters only on indexed columns, with fixed choices (no ``SELECT DISTINCT`` over the table):
  entity kind, from/to status; batch, opportunity and access by typed value, also usable
  directly in the query string — ``?batch__id__exact=<uuid>``, ``?opportunity_id=<id or
  UUID>``, ``?access_id=<id>``;
* search is exact on indexed columns: an integer finds events of that entity id (visit or
  completed work), any text finds that xform id, a UUID finds that batch's events;
* no facets, no date hierarchy, sorting only by id / recorded time.
"""

from __future__ import annotations

import json
import uuid

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Q
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join

from ledger import selectors
from ledger.host import (
    CompletedWorkStatus,
    Opportunity,
    VisitValidationStatus,
)
from ledger.models import (
    AccrualRecompute,
    CorrectionBatch,
    CorrectionEvent,
    EntityKind,
    PlannedChange,
)

EXACT_COUNT_UP_TO = 10_000
EVENTS_ON_BATCH_PAGE = 50


# --------------------------------------------------------------------------------------------
# Counting without scanning
# --------------------------------------------------------------------------------------------


def _table_estimate(model) -> int | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
            [model._meta.db_table],
        )
        row = cursor.fetchone()
    if row is None or row[0] is None or row[0] < 0:
        return None
    return int(row[0])


def _planner_estimate(queryset) -> int | None:
    sql, params = queryset.order_by().query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str | bytes):
        plan = json.loads(plan)
    try:
        return int(plan[0]["Plan"]["Plan Rows"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


class EstimatedCountPaginator(Paginator):
    """A paginator that never counts a million rows.

    Unfiltered lists use ``pg_class.reltuples``; filtered lists count exactly up to
    :data:`EXACT_COUNT_UP_TO` rows and use the planner's estimate beyond.
    """

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not queryset.query.where:
            estimate = _table_estimate(queryset.model)
            if estimate is not None and estimate > EXACT_COUNT_UP_TO:
                return estimate
        exact = queryset.order_by()[: EXACT_COUNT_UP_TO + 1].count()
        if exact <= EXACT_COUNT_UP_TO:
            return exact
        return max(exact, _planner_estimate(queryset) or 0)


# --------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------

STATUS_CHOICES = sorted(
    {*VisitValidationStatus.values, *CompletedWorkStatus.values},
)


class _StatusFilter(admin.SimpleListFilter):
    """Fixed choices: the host's visit and completed-work statuses (no DISTINCT scan)."""

    def lookups(self, request, model_admin):
        return [(status, status) for status in STATUS_CHOICES]

    def queryset(self, request, queryset):
        value = self.value()
        if value:
            return queryset.filter(**{self.parameter_name: value})
        return queryset


class FromStatusFilter(_StatusFilter):
    title = "from status"
    parameter_name = "from_status"


class ToStatusFilter(_StatusFilter):
    title = "to status"
    parameter_name = "to_status"


class InputFilter(admin.ListFilter):
    """A sidebar text box filtering one indexed column by exact value."""

    template = "admin/ledger/input_filter.html"
    parameter_name: str = ""
    placeholder = ""

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        if self.parameter_name in params:
            value = params.pop(self.parameter_name)
            value = value[-1] if isinstance(value, list) else value
            self.used_parameters[self.parameter_name] = value.strip()

    def value(self) -> str | None:
        return self.used_parameters.get(self.parameter_name) or None

    def has_output(self) -> bool:
        return True

    def expected_parameters(self):
        return [self.parameter_name]

    def choices(self, changelist):
        hidden = [
            (key, value)
            for key, value in self.request.GET.items()
            if key not in (self.parameter_name, "p", "e")
        ]
        yield {
            "name": self.parameter_name,
            "value": self.value() or "",
            "placeholder": self.placeholder,
            "hidden": hidden,
            "clear_url": changelist.get_query_string(remove=[self.parameter_name]),
        }

    def to_filter(self, value: str) -> Q:
        raise NotImplementedError

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        try:
            return queryset.filter(self.to_filter(value))
        except (ValueError, TypeError) as error:
            raise IncorrectLookupParameters(str(error)) from None


def _bigint(value: str) -> int:
    number = int(value)
    if not 0 < number < 2**63:
        raise ValueError(f"{value} is out of range")
    return number


class BatchInputFilter(InputFilter):
    title = "batch"
    parameter_name = "batch__id__exact"
    placeholder = "batch id (UUID)"

    def to_filter(self, value):
        return Q(batch_id=uuid.UUID(value))


class OpportunityInputFilter(InputFilter):
    title = "opportunity"
    parameter_name = "opportunity_id"
    placeholder = "opportunity id or UUID"

    def to_filter(self, value):
        if value.isdigit():
            return Q(opportunity_id=_bigint(value))
        key = uuid.UUID(value)
        pk = Opportunity.objects.filter(opportunity_id=key).values_list("pk", flat=True).first()
        return Q(opportunity_id=pk) if pk is not None else Q(pk__in=[])


class AccessInputFilter(InputFilter):
    title = "access"
    parameter_name = "access_id"
    placeholder = "access id"

    def to_filter(self, value):
        return Q(access_id=_bigint(value))


# --------------------------------------------------------------------------------------------
# Read-only base
# --------------------------------------------------------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """View only: no add, change or delete for anyone, no actions, no full counts."""

    actions = None
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator
    list_per_page = 100
    list_max_show_all = 500

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_actions(self, request):
        return {}


def _search_filter(term: str) -> Q | None:
    """Exact, indexed matches: entity id, xform id, batch id."""
    term = term.strip()
    if not term:
        return None
    q = Q(xform_id=term[:50])
    if term.isdigit() and int(term) < 2**63:
        q |= Q(entity_kind__in=EntityKind.values, entity_id=int(term))
    try:
        q |= Q(batch_id=uuid.UUID(term))
    except ValueError:
        pass
    return q


class ExactSearchMixin:
    search_fields = ("=xform_id",)
    search_help_text = "Exact entity id (visit or completed work), xform id, or batch id."

    def get_search_results(self, request, queryset, search_term):
        q = _search_filter(search_term)
        if q is None:
            return queryset, False
        return queryset.filter(q), False


def _link(viewname: str, text, *args, query: str = ""):
    url = reverse(viewname, args=args) + (f"?{query}" if query else "")
    return format_html('<a href="{}">{}</a>', url, text)


def _batch_link(batch_id) -> str:
    if batch_id is None:
        return "—"
    return _link("admin:ledger_correctionbatch_change", batch_id, batch_id)


def _pretty_json(value) -> str:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True, default=str))


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


@admin.register(CorrectionBatch)
class CorrectionBatchAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "planner",
        "state",
        "reason",
        "ticket",
        "planned_by",
        "applied_by",
        "created_at",
        "applied_at",
        "undone_at",
    )
    list_filter = ("state", "planner")
    sortable_by = ("created_at", "applied_at")
    ordering = ("-created_at",)
    search_fields = ("=ticket",)
    search_help_text = "Exact batch id or ticket."
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "planner",
                    "state",
                    "reason",
                    "ticket",
                    "planned_by",
                    "applied_by",
                    "created_at",
                    "applied_at",
                    "undone_at",
                    "discarded_at",
                    "plan_digest",
                )
            },
        ),
        ("Lineage", {"fields": ("reverts_link", "reverted_by_link")}),
        ("Counts", {"fields": ("counts", "recompute_progress", "planned")}),
        ("Scope and summary", {"fields": ("scope_json", "summary_json", "conflicts_json")}),
        ("Events", {"fields": ("events_table",)}),
    )
    readonly_fields = (
        "reverts_link",
        "reverted_by_link",
        "counts",
        "recompute_progress",
        "planned",
        "scope_json",
        "summary_json",
        "conflicts_json",
        "events_table",
    )

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        q = Q(ticket=term)
        try:
            q |= Q(pk=uuid.UUID(term))
        except ValueError:
            pass
        return queryset.filter(q), False

    def _row(self, obj) -> selectors.BatchRow:
        cache = getattr(obj, "_audit_row", None)
        if cache is None:
            cache = obj._audit_row = selectors.batch_row(obj.pk)
        return cache

    @admin.display(description="reverts")
    def reverts_link(self, obj):
        return _batch_link(obj.reverts_id)

    @admin.display(description="reverted by")
    def reverted_by_link(self, obj):
        row = self._row(obj)
        if row.reverted_by is None:
            return "—"
        return format_html("{} ({})", _batch_link(row.reverted_by), row.reverted_by_state)

    @admin.display(description="events")
    def counts(self, obj):
        row = self._row(obj)
        return format_html(
            "{} events: {} visits, {} completed works, {} accesses — {}",
            row.events,
            row.visits,
            row.works,
            row.accesses,
            _link(
                "admin:ledger_correctionevent_changelist",
                "all events",
                query=f"batch__id__exact={obj.pk}",
            ),
        )

    @admin.display(description="accrual recomputes")
    def recompute_progress(self, obj):
        row = self._row(obj)
        return format_html(
            "{} done, {} pending — {}",
            row.recomputes_done,
            row.recomputes_pending,
            _link(
                "admin:ledger_accrualrecompute_changelist",
                "recomputes",
                query=f"batch__id__exact={obj.pk}",
            ),
        )

    @admin.display(description="planned changes")
    def planned(self, obj):
        return _link(
            "admin:ledger_plannedchange_changelist",
            "planned changes",
            query=f"batch__id__exact={obj.pk}",
        )

    @admin.display(description="scope")
    def scope_json(self, obj):
        return _pretty_json(obj.scope)

    @admin.display(description="summary")
    def summary_json(self, obj):
        return _pretty_json(obj.summary)

    @admin.display(description="skipped conflicts")
    def conflicts_json(self, obj):
        return _pretty_json(obj.skipped_conflicts)

    @admin.display(description=f"first {EVENTS_ON_BATCH_PAGE} events")
    def events_table(self, obj):
        events = list(
            CorrectionEvent.objects.filter(batch=obj)
            .order_by("id")
            .values_list("id", "entity_kind", "entity_id", "xform_id", "from_status", "to_status")[
                :EVENTS_ON_BATCH_PAGE
            ]
        )
        if not events:
            return "—"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} → {}</td></tr>",
            (
                (
                    _link("admin:ledger_correctionevent_change", id_, id_),
                    kind,
                    entity_id,
                    xform or "",
                    from_status,
                    to_status,
                )
                for id_, kind, entity_id, xform, from_status, to_status in events
            ),
        )
        return format_html(
            "<table><thead><tr><th>event</th><th>kind</th><th>entity</th><th>xform id</th>"
            "<th>status</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )


# --------------------------------------------------------------------------------------------
# Planned changes
# --------------------------------------------------------------------------------------------


@admin.register(PlannedChange)
class PlannedChangeAdmin(ExactSearchMixin, ReadOnlyAdmin):
    list_display = (
        "id",
        "batch_id",
        "entity_kind",
        "entity_id",
        "completed_work_id",
        "xform_id",
        "from_status",
        "to_status",
        "excluded",
        "suspended",
        "opportunity_id",
        "access_id",
    )
    list_filter = (BatchInputFilter, "entity_kind", "excluded", OpportunityInputFilter)
    sortable_by = ("id",)
    ordering = ("-id",)

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        q = Q(xform_id=term[:50])
        if term.isdigit() and int(term) < 2**63:
            q |= Q(entity_id=int(term))
        try:
            q |= Q(batch_id=uuid.UUID(term))
        except ValueError:
            pass
        return queryset.filter(q), False


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


@admin.register(CorrectionEvent)
class CorrectionEventAdmin(ExactSearchMixin, ReadOnlyAdmin):
    list_display = (
        "id",
        "recorded_at",
        "batch_column",
        "entity_kind",
        "entity_id",
        "xform_id",
        "change",
        "opportunity_id",
        "access_id",
        "inverts_id",
    )
    list_display_links = ("id",)
    list_filter = (
        "entity_kind",
        FromStatusFilter,
        ToStatusFilter,
        BatchInputFilter,
        OpportunityInputFilter,
        AccessInputFilter,
    )
    list_select_related = ("batch",)
    sortable_by = ("id", "recorded_at")
    ordering = ("-id",)
    fields = (
        "id",
        "recorded_at",
        "batch_link",
        "planner",
        "operators",
        "entity_kind",
        "entity_id",
        "completed_work_id",
        "xform_id",
        "opportunity_id",
        "access_id",
        "from_status",
        "to_status",
        "reason",
        "prior_status_modified_date",
        "new_status_modified_date",
        "inverts_link",
        "inverted_by_link",
        "prev_hash",
        "hash",
    )
    readonly_fields = (
        "batch_link",
        "planner",
        "operators",
        "inverts_link",
        "inverted_by_link",
    )

    @admin.display(description="batch")
    def batch_column(self, obj):
        return format_html("{} ({})", _batch_link(obj.batch_id), obj.batch.planner)

    @admin.display(description="from → to")
    def change(self, obj):
        return f"{obj.from_status} → {obj.to_status}"

    @admin.display(description="batch")
    def batch_link(self, obj):
        return format_html("{} ({})", _batch_link(obj.batch_id), obj.batch.state)

    @admin.display(description="planner")
    def planner(self, obj):
        return obj.batch.planner

    @admin.display(description="planned by / applied by")
    def operators(self, obj):
        return f"{obj.batch.planned_by} / {obj.batch.applied_by or '—'}"

    @admin.display(description="inverts")
    def inverts_link(self, obj):
        if obj.inverts_id is None:
            return "—"
        return _link("admin:ledger_correctionevent_change", obj.inverts_id, obj.inverts_id)

    @admin.display(description="inverted by")
    def inverted_by_link(self, obj):
        later = (
            CorrectionEvent.objects.filter(inverts_id=obj.pk).values_list("id", "batch_id").first()
        )
        if later is None:
            return "—"
        return format_html(
            "{} in undo batch {}",
            _link("admin:ledger_correctionevent_change", later[0], later[0]),
            _batch_link(later[1]),
        )


# --------------------------------------------------------------------------------------------
# Recomputes
# --------------------------------------------------------------------------------------------


@admin.register(AccrualRecompute)
class AccrualRecomputeAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "batch_id",
        "access_id",
        "opportunity_id",
        "state",
        "accrual_before",
        "projected_after",
        "accrual_after",
        "created_at",
        "done_at",
    )
    list_filter = ("state", BatchInputFilter, AccessInputFilter, OpportunityInputFilter)
    sortable_by = ("id",)
    ordering = ("-id",)
    search_fields = ()
