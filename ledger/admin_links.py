"""Links from the host's admin to the ledger's: each visit and completed work to its corrections.

The host registers its own ``ModelAdmin`` for ``UserVisit`` and ``CompletedWork``; it adds
:class:`CorrectionsLinkMixin` first among the bases::

    from ledger.admin_links import CorrectionsLinkMixin

    @admin.register(UserVisit)
    class UserVisitAdmin(CorrectionsLinkMixin, admin.ModelAdmin):
        ...

Every row of the list then ends with a "corrections" link to the ledger's event list of that
visit (a completed work's list shows the work's events and its visits'), and the object's page
shows the same link with the number of events. The list costs no query (the link is built from
the row's id); the page counts through the ledger's entity and work indexes. Users without the
``ledger.view_correctionevent`` permission see neither.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import admin
from django.db.models import Q
from django.urls import reverse
from django.utils.html import format_html

from ledger.host import CompletedWork, UserVisit
from ledger.models import CorrectionEvent, EntityKind

LIST_FIELD = "ledger_corrections"
PAGE_FIELD = "ledger_corrections_record"
PERMISSION = "ledger.view_correctionevent"


def _kind(model) -> str:
    if issubclass(model, UserVisit):
        return EntityKind.visit
    if issubclass(model, CompletedWork):
        return EntityKind.completed_work
    raise TypeError(f"{model.__name__} is neither the host's UserVisit nor its CompletedWork")


def corrections_url(model, pk) -> str:
    """The ledger's event list of one host visit or completed work (a work's includes its
    visits' events)."""
    parameter = "visit_id" if _kind(model) == EntityKind.visit else "completed_work_id"
    return reverse("admin:ledger_correctionevent_changelist") + "?" + urlencode({parameter: pk})


def corrections_count(model, pk) -> int:
    """How many ledger events concern the row, through the ledger's entity and work indexes."""
    kind = _kind(model)
    condition = Q(entity_kind=kind, entity_id=pk)
    if kind == EntityKind.completed_work:
        condition |= Q(completed_work_id=pk)
    return CorrectionEvent.objects.filter(condition).count()


class CorrectionsLinkMixin:
    """For the host's ``UserVisit`` and ``CompletedWork`` admins: a "corrections" column on the
    list and a read-only "corrections" field on the object's page, linking to the ledger."""

    def _may_see_corrections(self, request) -> bool:
        return request.user.has_perm(PERMISSION)

    def get_list_display(self, request):
        columns = list(super().get_list_display(request))
        if self._may_see_corrections(request) and LIST_FIELD not in columns:
            columns.append(LIST_FIELD)
        return columns

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and self._may_see_corrections(request) and PAGE_FIELD not in fields:
            fields.append(PAGE_FIELD)
        return fields

    def get_fields(self, request, obj=None):
        fields = list(super().get_fields(request, obj))
        shown = obj is not None and self._may_see_corrections(request)
        if shown and PAGE_FIELD not in fields:
            fields.append(PAGE_FIELD)
        elif not shown and PAGE_FIELD in fields:
            fields.remove(PAGE_FIELD)
        return fields

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if self.fieldsets is None or obj is None or not self._may_see_corrections(request):
            return fieldsets
        if any(PAGE_FIELD in opts.get("fields", ()) for _, opts in fieldsets):
            return fieldsets
        return [*fieldsets, ("Corrections ledger", {"fields": (PAGE_FIELD,)})]

    @admin.display(description="corrections")
    def ledger_corrections(self, obj):
        return format_html(
            '<a href="{}" class="ledger-corrections">corrections</a>',
            corrections_url(type(obj), obj.pk),
        )

    @admin.display(description="corrections")
    def ledger_corrections_record(self, obj):
        count = corrections_count(type(obj), obj.pk)
        if not count:
            return "None recorded in the corrections ledger."
        scope = "events of this work and its visits" if _kind(type(obj)) != "visit" else "events"
        return format_html(
            '<a href="{}" class="ledger-corrections">{} {}</a> in the corrections ledger',
            corrections_url(type(obj), obj.pk),
            count,
            scope if count != 1 else scope.replace("events", "event", 1),
        )
