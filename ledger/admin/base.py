"""What every ledger admin shares: counts that never scan, a read-only base that refuses
unindexed lookups, and small formatting helpers (short ids, times to the second, links)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.options import IS_POPUP_VAR, TO_FIELD_VAR
from django.contrib.admin.views.main import ALL_VAR, ERROR_FLAG, ORDER_VAR, PAGE_VAR, SEARCH_VAR
from django.core.paginator import Paginator
from django.db import connection
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html

from ledger.admin.lookups import LedgerFilter, active_selection, refused_parameters

EXACT_COUNT_UP_TO = 10_000

# Parameters of Django's change list itself: page, sorting, search, "show all", error flag.
CHANGELIST_PARAMETERS = frozenset(
    {ALL_VAR, ORDER_VAR, PAGE_VAR, SEARCH_VAR, ERROR_FLAG, IS_POPUP_VAR, TO_FIELD_VAR}
)


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
# Formatting
# --------------------------------------------------------------------------------------------

DASH = "—"


def stamp(value: datetime.datetime | None) -> str:
    """A time to the second in the site's time zone, as text."""
    if value is None:
        return DASH
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S")


def when(value: datetime.datetime | None):
    """A time to the second in the site's time zone; the full value on hover."""
    if value is None:
        return DASH
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        value.isoformat(),
        timezone.localtime(value).isoformat(),
        stamp(value),
    )


def short_id(value) -> str:
    return str(value)[:8]


def admin_url(viewname: str, *args, query: dict | None = None) -> str:
    url = reverse(viewname, args=args)
    return f"{url}?{urlencode(query)}" if query else url


def link(url: str, text, title: str = "", css: str = ""):
    return format_html('<a href="{}" title="{}" class="{}">{}</a>', url, title, css, text)


def batch_link(batch_id, *, full: bool = False):
    """A batch id, shortened to eight characters unless ``full``, linking to the batch page."""
    if batch_id is None:
        return DASH
    return link(
        admin_url("admin:ledger_correctionbatch_change", batch_id),
        str(batch_id) if full else short_id(batch_id),
        title=str(batch_id),
        css="ledger-id",
    )


def event_link(event_id, text=None):
    if event_id is None:
        return DASH
    return link(
        admin_url("admin:ledger_correctionevent_change", event_id),
        text if text is not None else f"#{event_id}",
    )


def events_url(**query) -> str:
    return admin_url("admin:ledger_correctionevent_changelist", query=query)


def entity_events_url(kind: str, entity_id) -> str:
    """The event list of one visit or completed work (a work's includes its visits' events)."""
    key = "visit_id" if kind == "visit" else "completed_work_id"
    return events_url(**{key: entity_id})


def entity_link(kind: str, entity_id):
    label = "visit" if kind == "visit" else "work"
    return link(
        entity_events_url(kind, entity_id),
        format_html("{}&nbsp;{}", label, entity_id),
        title=f"every event of this {kind.replace('_', ' ')}",
    )


def state_badge(state: str):
    return format_html(
        '<span class="ledger-state ledger-state-{}">{}</span>', state, state.replace("_", " ")
    )


def truncated(text: str, length: int = 60):
    text = text or ""
    shown = text if len(text) <= length else text[: length - 1] + "…"
    return format_html('<span title="{}">{}</span>', text, shown)


# --------------------------------------------------------------------------------------------
# The read-only base
# --------------------------------------------------------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """View only: no add, change or delete for anyone, no actions, no full counts, and only the
    indexed lookups the list offers.

    ``list_filter`` holds :class:`~ledger.admin.lookups.LedgerFilter` classes only; a filter
    whose column no index leads is left out (:meth:`get_list_filter`). Any other query
    parameter — ``?reason__icontains=``, a filter on an unindexed column, a narrowing filter
    used alone — is refused: the list is shown without it, with a message saying why.
    """

    actions = None
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = EstimatedCountPaginator
    list_per_page = 100
    list_max_show_all = 500
    list_filter: tuple[type[LedgerFilter], ...] = ()
    # The columns the (exact) search matches, each leading an index; empty: no search box.
    search_columns: tuple[str, ...] = ()

    class Media:
        css = {"all": ("ledger/admin.css",)}

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_actions(self, request):
        return {}

    # Lookups ---------------------------------------------------------------------------------

    def get_list_filter(self, request):
        return [f for f in self.list_filter if f.offered(self.model)]

    def get_search_fields(self, request):
        # Django shows the search box only when this is non-empty; the search itself is
        # get_search_results, exact and indexed.
        return ("=id",) if self.search_columns else ()

    def allowed_parameters(self, request) -> set[str]:
        allowed = set(CHANGELIST_PARAMETERS)
        if not self.search_columns:
            allowed.discard(SEARCH_VAR)
        for f in self.get_list_filter(request):
            allowed.add(f.parameter_name)
        return allowed

    def lookup_allowed(self, lookup, value, request=None):
        return request is None or lookup in self.allowed_parameters(request)

    def changelist_view(self, request, extra_context=None):
        filters = self.get_list_filter(request)
        refused = refused_parameters(
            request.GET, filters, self.allowed_parameters(request), bool(self.search_columns)
        )
        if refused:
            for name, why in refused:
                messages.error(request, f"“{name}” is not a lookup this list offers: {why}.")
            kept = request.GET.copy()
            for name, _ in refused:
                kept.pop(name, None)
            query = kept.urlencode()
            return HttpResponseRedirect(request.path + (f"?{query}" if query else ""))
        request.ledger_selection = active_selection(request.GET, filters)
        return super().changelist_view(request, extra_context)

    # The misleading "History" (Django's log of admin edits, always empty here) ----------------

    def history_view(self, request, object_id, extra_context=None):
        """There are no admin edits to show: send the reader to the ledger's own record."""
        return HttpResponseRedirect(
            reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[object_id])
        )

    def object_tools(self, request, obj) -> Iterable[tuple[str, str]]:
        """(label, url) links shown at the top right of an object's page."""
        return ()

    def render_change_form(self, request, context, *args, obj=None, **kwargs):
        if obj is not None:
            context["ledger_tools"] = list(self.object_tools(request, obj))
        return super().render_change_form(request, context, *args, obj=obj, **kwargs)
