"""The stand-in host's admin for visits and completed works, shaped like the host's own
(a few columns, searches by worker and opportunity), each row linked to its corrections
through the ledger's mixin — the way the host adds it."""

from django.contrib import admin

from commcare_connect.opportunity.models import CompletedWork, UserVisit
from ledger.admin_links import CorrectionsLinkMixin


@admin.register(UserVisit)
class UserVisitAdmin(CorrectionsLinkMixin, admin.ModelAdmin):
    list_display = ["id", "deliver_unit", "user", "opportunity", "status", "completed_work"]
    list_select_related = ["deliver_unit", "user", "opportunity"]
    search_fields = ["opportunity_access__user__username", "opportunity__name"]
    raw_id_fields = ["opportunity_access", "completed_work", "user", "opportunity", "deliver_unit"]


@admin.register(CompletedWork)
class CompletedWorkAdmin(CorrectionsLinkMixin, admin.ModelAdmin):
    list_display = ["id", "worker", "opportunity_name", "payment_unit", "status"]
    list_select_related = ["opportunity_access__user", "opportunity_access__opportunity"]
    search_fields = ["opportunity_access__user__username", "opportunity_access__opportunity__name"]
    raw_id_fields = ["opportunity_access", "payment_unit"]
    readonly_fields = ["date_created"]

    @admin.display(description="worker")
    def worker(self, obj):
        return obj.opportunity_access.user.username

    @admin.display(description="opportunity")
    def opportunity_name(self, obj):
        return obj.opportunity_access.opportunity.name
