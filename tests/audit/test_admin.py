"""The ledger's admin: pages render, every write is refused, every offered lookup reads an index
and any other lookup is refused, static files are served without DEBUG, and the host's visit
and completed-work admins link to their corrections."""

from __future__ import annotations

import json

import pytest
from django.contrib import admin as django_admin
from django.contrib.auth.models import Group, Permission
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from commcare_connect.opportunity.models import CompletedWork, UserVisit
from commcare_connect.users.models import User
from ledger import admin as ledger_admin
from ledger.admin import base as admin_base
from ledger.admin.lookups import LedgerFilter
from ledger.admin_links import CorrectionsLinkMixin, corrections_url
from ledger.models import (
    AccrualRecompute,
    BatchEntry,
    CorrectionBatch,
    CorrectionEvent,
    PlannedChange,
)

MODELS = (CorrectionBatch, PlannedChange, CorrectionEvent, AccrualRecompute, BatchEntry)


def _url(model, view, *args):
    return reverse(f"admin:ledger_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def root(db) -> User:
    return User.objects.create_superuser(username="root", email="r@example.org", password="x")


@pytest.fixture
def superuser_client(root) -> Client:
    client = Client()
    client.force_login(root)
    return client


@pytest.fixture
def auditor_client(db) -> Client:
    group = Group.objects.create(name="auditors")
    group.permissions.set(
        Permission.objects.filter(content_type__app_label="ledger", codename__startswith="view_")
    )
    user = User.objects.create_user(username="audrey", password="x", is_staff=True)
    user.groups.add(group)
    client = Client()
    client.force_login(user)
    return client


def _counts():
    return tuple(model.objects.count() for model in MODELS)


def _page(client, url, **params) -> str:
    response = client.get(url, params)
    assert response.status_code == 200, (url, params, response.status_code)
    return response.content.decode()


# --------------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------------


def test_pages_render(undone, superuser_client):
    c = superuser_client
    event = CorrectionEvent.objects.filter(batch_id=undone.batch).first()
    undo_event = CorrectionEvent.objects.get(inverts=event)
    recompute = AccrualRecompute.objects.filter(batch_id=undone.batch).first()
    change = PlannedChange.objects.filter(batch_id=undone.batch).first()
    entry = BatchEntry.objects.filter(batch_id=undone.batch).first()

    assert c.get(reverse("admin:app_list", args=["ledger"])).status_code == 200

    batches = _page(c, _url(CorrectionBatch, "changelist"))
    assert undone.batch[:8] in batches and "alice · — · bob" in batches
    assert "ledger/admin.css" in batches  # the ledger's styles are linked

    page = _page(c, _url(CorrectionBatch, "change", undone.batch))
    for text in ("CI-639", "alice", "bob", undone.undo, "6 events</a>: 4 visits, 2 completed works",
                 "2 done, 0 pending", f"batch__id__exact={undone.batch}",
                 "approved → over_limit", "Lifecycle", "Planned", "Applied", "Undone",
                 "Totals by currency", "all currencies", "By opportunity", "Per access",
                 "Accrual change per opportunity", "<svg", "Outcomes", "as projected",
                 "Scope", "include paid works"):  # fmt: skip
        assert text in page, text
    assert "historylink" not in page

    undo_page = _page(c, _url(CorrectionBatch, "change", undone.undo))
    assert "An undo batch has no priced plan" in undo_page and "restored" in undo_page

    event_page = _page(c, _url(CorrectionEvent, "change", event.pk))
    assert event.hash in event_page and "Undone by" in event_page
    assert f"#{undo_event.pk}" in event_page and "Every event of this" in event_page
    undo_event_page = _page(c, _url(CorrectionEvent, "change", undo_event.pk))
    assert "Inverts" in undo_event_page and f"#{event.pk}" in undo_event_page

    for model, pk in (
        (AccrualRecompute, recompute.pk),
        (PlannedChange, change.pk),
        (BatchEntry, entry.pk),
    ):
        _page(c, _url(model, "changelist"))
        _page(c, _url(model, "change", pk))

    # Django's "History" (an empty log of admin edits) leads back to the ledger's page.
    history = c.get(_url(CorrectionEvent, "history", event.pk))
    assert history.status_code == 302 and history.url == _url(CorrectionEvent, "change", event.pk)


def test_a_batch_without_a_plan_summary_still_renders(superuser_client):
    from tests.audit.conftest import make_batch

    batch = make_batch(summary={"plan": {"unexpected": True}}, scope=["odd"])
    page = _page(superuser_client, _url(CorrectionBatch, "change", batch.pk))
    assert "This batch holds no priced plan" in page


def test_recompute_rows_link_their_batch(undone, superuser_client):
    page = _page(superuser_client, _url(AccrualRecompute, "changelist"))
    assert f'href="{_url(CorrectionBatch, "change", undone.batch)}"' in page


# --------------------------------------------------------------------------------------------
# Lookups
# --------------------------------------------------------------------------------------------


def test_event_list_filters_and_search(undone, superuser_client):
    c = superuser_client
    url = _url(CorrectionEvent, "changelist")
    opp = undone.incident.opportunity_a
    visit_event = CorrectionEvent.objects.filter(entity_kind="visit").first()
    work_event = CorrectionEvent.objects.filter(entity_kind="completed_work").first()

    def ids(**params):
        response = c.get(url, params)
        assert response.status_code == 200, response.content[:500]
        return sorted(obj.pk for obj in response.context["cl"].result_list)

    events = CorrectionEvent.objects

    def expected(**lookup):
        return sorted(events.filter(**lookup).values_list("id", flat=True))

    every = expected()
    assert ids() == every
    assert ids(entity_kind="visit") == expected(entity_kind="visit")
    assert ids(batch__id__exact=undone.undo) == expected(batch_id=undone.undo)
    assert ids(batch__id__exact=undone.batch, to_status="over_limit") == expected(
        batch_id=undone.batch
    )
    assert ids(batch__id__exact=undone.undo, to_status="over_limit") == []
    assert ids(opportunity_id=str(opp.pk)) == every
    assert ids(opportunity_id=str(opp.opportunity_id)) == every
    assert ids(opportunity_id="999999") == []
    assert ids(visit_id=str(visit_event.entity_id)) == expected(
        entity_kind="visit", entity_id=visit_event.entity_id
    )
    work = work_event.entity_id
    assert ids(completed_work_id=str(work)) == expected(completed_work_id=work)
    assert len(ids(completed_work_id=str(work))) > 2  # the work's events and its visits'
    assert ids(q=str(visit_event.entity_id)) == expected(
        entity_kind="visit", entity_id=visit_event.entity_id
    )
    assert len(ids(q=visit_event.xform_id)) == 2
    assert len(ids(q=undone.batch)) == 6
    assert len(ids(q=undone.batch[:8])) == 6  # the short id the lists show

    # A malformed value is refused by the admin's usual "?e=1" redirect, not a 500.
    for params in ({"batch__id__exact": "not-a-uuid"}, {"access_id": "x"}, {"visit_id": "-1"}):
        assert c.get(url, params).status_code == 302


@pytest.mark.parametrize(
    "model, params, refused",
    [
        (CorrectionEvent, {"reason__icontains": "over"}, "reason__icontains"),
        (CorrectionEvent, {"to_status": "over_limit"}, "to_status"),
        (CorrectionEvent, {"batch__planner": "undo"}, "batch__planner"),
        (CorrectionEvent, {"recorded_at__year": "2026"}, "recorded_at__year"),
        (CorrectionBatch, {"reason__icontains": "CI"}, "reason__icontains"),
        (CorrectionBatch, {"applied_by": "bob"}, "applied_by"),
        (PlannedChange, {"xform_id": "x"}, "xform_id"),
        (PlannedChange, {"excluded": "paid"}, "excluded"),
        (AccrualRecompute, {"state": "done"}, "state"),
        (AccrualRecompute, {"opportunity_id": "1"}, "opportunity_id"),
        (BatchEntry, {"actor": "bob"}, "actor"),
    ],
)
def test_lookups_no_index_serves_are_refused(
    undone, root, superuser_client, model, params, refused
):
    url = _url(model, "changelist")
    with CaptureQueriesContext(connection) as queries:
        response = superuser_client.get(url, {**params, "p": "1"})
    assert response.status_code == 302
    assert refused not in response.url and "p=1" in response.url
    assert not [q for q in queries if model._meta.db_table in q["sql"]]  # nothing was read
    message = [str(m) for m in get_messages(response.wsgi_request)]
    assert len(message) == 1 and f"“{refused}” is not a lookup this list offers" in message[0]
    # The model admin's own guard says the same, should anything reach the change list.
    model_admin = django_admin.site._registry[model]
    request = RequestFactory().get(url)
    request.user = root
    if refused not in model_admin.allowed_parameters(request):
        assert not model_admin.lookup_allowed(refused, "x", request)


def test_narrowing_filters_apply_within_a_selection(undone, superuser_client):
    ok = superuser_client.get(
        _url(PlannedChange, "changelist"), {"batch__id__exact": undone.batch, "excluded": "none"}
    )
    assert ok.status_code == 200
    assert ok.context["cl"].result_list
    assert all(c.excluded == "" for c in ok.context["cl"].result_list)
    pending = superuser_client.get(_url(AccrualRecompute, "changelist"), {"state": "pending"})
    assert pending.status_code == 200 and list(pending.context["cl"].result_list) == []


def _explain(queryset) -> tuple[str, dict]:
    sql, params = queryset.order_by().query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        try:
            cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
            plan = cursor.fetchone()[0]
        finally:
            cursor.execute("SET LOCAL enable_seqscan = on")
    if isinstance(plan, str | bytes):
        plan = json.loads(plan)
    return json.dumps(plan), plan


SAMPLE_VALUES = {
    "batch__id__exact": lambda s: s.batch,
    "access_id": lambda s: str(next(iter(s.incident.accesses.values())).pk),
    "opportunity_id": lambda s: str(s.incident.opportunity_a.pk),
    "visit_id": lambda s: "1",
    "completed_work_id": lambda s: "1",
    "entity_kind": lambda s: "visit",
    "state": lambda s: "pending",
    "from_status": lambda s: "approved",
    "to_status": lambda s: "over_limit",
    "excluded": lambda s: "paid",
    "suspended": lambda s: "True",
    "action": lambda s: "apply",
    "planner": lambda s: "over_cap",
}


def _database_indexes(table: str, column: str) -> list[str]:
    """Valid indexes of ``table`` in the database whose first column is ``column``."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT i.relname FROM pg_index x
               JOIN pg_class i ON i.oid = x.indexrelid
               JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
               WHERE x.indrelid = %s::regclass AND a.attname = %s AND x.indisvalid""",
            [table, column],
        )
        return [name for (name,) in cursor.fetchall()]


def test_every_offered_lookup_reads_an_index(undone, root):
    """Each filter an admin offers has an index in the database leading with its column (a
    narrowing one is checked inside a batch), and neither it nor the search makes PostgreSQL
    read the table from end to end."""
    checked = []
    for model in MODELS:
        model_admin = django_admin.site._registry[model]
        table = model._meta.db_table
        request = RequestFactory().get("/")
        request.user = root
        for f in model_admin.get_list_filter(request):
            if (model, f.parameter_name) == (CorrectionBatch, "state"):
                value = "applied"
            else:
                value = SAMPLE_VALUES[f.parameter_name](undone)
            params = {f.parameter_name: value}
            columns = f.columns
            if not f.indexed_for(value):
                params["batch__id__exact"] = undone.batch
                columns = ("batch_id",)
            for column in columns:
                found = _database_indexes(table, column)
                if f.parameter_name == "state" and model is AccrualRecompute:
                    found = [
                        n for n in f.indexes(model) if n in _database_indexes(table, "access_id")
                    ]
                assert found, (model, f.parameter_name, column)
            request = RequestFactory().get("/", params)
            request.user = root
            request.ledger_selection = True
            queryset = model_admin.get_changelist_instance(request).queryset
            text, _ = _explain(queryset)
            assert f"Seq Scan on {table}" not in text.replace('"', ""), (model, params, text)
            checked.append((model.__name__, f.parameter_name))
        if model_admin.search_columns:
            for column in model_admin.search_columns:
                assert _database_indexes(table, column), (model, column)
            for term in ("12345", undone.batch[:8], "some-xform-id"):
                request = RequestFactory().get("/", {"q": term})
                request.user = root
                queryset = model_admin.get_changelist_instance(request).queryset
                if queryset.query.is_empty():
                    continue  # a term the search cannot match reads nothing
                text, _ = _explain(queryset)
                assert f"Seq Scan on {table}" not in text.replace('"', ""), (model, term, text)
    assert len(checked) >= 15, checked


def test_filters_wait_for_their_index():
    """A filter on a column no index leads is not offered until the model has one."""

    class ReasonFilter(LedgerFilter):
        title = "reason"
        parameter_name = "reason"
        columns = ("reason",)

    class StateFilter(ReasonFilter):
        columns = ("state",)

    assert not ReasonFilter.offered(CorrectionBatch)
    assert StateFilter.offered(CorrectionBatch)


def test_event_list_never_counts_the_whole_table(undone, superuser_client):
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {CorrectionEvent._meta.db_table}")
    with CaptureQueriesContext(connection) as queries:
        response = superuser_client.get(_url(CorrectionEvent, "changelist"))
    assert response.status_code == 200
    table = CorrectionEvent._meta.db_table
    full_counts = [
        q["sql"] for q in queries
        if "COUNT(" in q["sql"].upper() and table in q["sql"] and "LIMIT" not in q["sql"].upper()
    ]  # fmt: skip
    assert full_counts == []


def test_paginator_estimates_big_tables(db, monkeypatch):
    monkeypatch.setattr(admin_base, "_table_estimate", lambda model: 1_000_000)
    paginator = ledger_admin.EstimatedCountPaginator(CorrectionEvent.objects.order_by("-id"), 100)
    assert paginator.count == 1_000_000 and paginator.num_pages == 10_000
    filtered = ledger_admin.EstimatedCountPaginator(
        CorrectionEvent.objects.filter(opportunity_id=1).order_by("-id"), 100
    )
    assert filtered.count == 0


# --------------------------------------------------------------------------------------------
# Nothing is written
# --------------------------------------------------------------------------------------------


def test_every_write_is_refused(undone, superuser_client):
    c = superuser_client
    before = _counts()
    batch = CorrectionBatch.objects.get(pk=undone.batch)
    event = CorrectionEvent.objects.filter(batch=batch).first()
    objects = {
        CorrectionBatch: batch.pk,
        PlannedChange: PlannedChange.objects.filter(batch=batch).first().pk,
        CorrectionEvent: event.pk,
        AccrualRecompute: AccrualRecompute.objects.filter(batch=batch).first().pk,
        BatchEntry: BatchEntry.objects.filter(batch=batch).first().pk,
    }
    for model, pk in objects.items():
        assert c.get(_url(model, "add")).status_code == 403
        assert c.post(_url(model, "add"), {"reason": "x"}).status_code == 403
        assert c.post(_url(model, "change", pk), {"reason": "forged"}).status_code == 403
        assert c.get(_url(model, "delete", pk)).status_code == 403
        assert c.post(_url(model, "delete", pk), {"post": "yes"}).status_code == 403
        bulk = c.post(
            _url(model, "changelist"),
            {"action": "delete_selected", "_selected_action": [pk], "post": "yes"},
        )
        assert bulk.status_code in (200, 302)
        page = c.get(_url(model, "change", pk)).content.decode()
        assert 'name="_save"' not in page and "deletelink" not in page
    assert _counts() == before
    batch.refresh_from_db()
    assert batch.reason == "CI-639 over-cap approvals" and batch.state == "undone"


def test_staff_need_the_view_permission(undone, db):
    staff = User.objects.create_user(username="staff", password="x", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get(_url(CorrectionEvent, "changelist")).status_code == 403
    staff.user_permissions.add(
        Permission.objects.get(codename="view_correctionevent", content_type__app_label="ledger"),
        Permission.objects.get(codename="change_correctionevent", content_type__app_label="ledger"),
    )
    client.force_login(User.objects.get(pk=staff.pk))
    assert client.get(_url(CorrectionEvent, "changelist")).status_code == 200
    pk = CorrectionEvent.objects.first().pk
    assert client.post(_url(CorrectionEvent, "change", pk), {}).status_code == 403


def test_a_view_only_auditor_sees_every_page(undone, auditor_client):
    c = auditor_client
    event = CorrectionEvent.objects.filter(batch_id=undone.batch).first()
    for model in MODELS:
        _page(c, _url(model, "changelist"))
    page = _page(c, _url(CorrectionBatch, "change", undone.batch))
    assert "Totals by currency" in page and 'name="_save"' not in page
    assert "Every event of this" in _page(c, _url(CorrectionEvent, "change", event.pk))
    # The host's rows are not the auditor's to see.
    assert c.get(reverse("admin:opportunity_uservisit_changelist")).status_code == 403


# --------------------------------------------------------------------------------------------
# Static files without DEBUG, in the standalone project
# --------------------------------------------------------------------------------------------


def test_static_files_are_served_without_debug(settings, db):
    settings.DEBUG = False
    client = Client()
    for path in ("/static/admin/css/base.css", "/static/ledger/admin.css"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response["Content-Type"].startswith("text/css")
        body = b"".join(response.streaming_content if response.streaming else [response.content])
        assert b"{" in body
    assert client.get("/static/ledger/missing.css").status_code == 404


def test_the_ledger_app_does_not_need_whitenoise():
    import pathlib

    import ledger

    for path in pathlib.Path(ledger.__file__).parent.rglob("*.py"):
        assert "whitenoise" not in path.read_text(), path


# --------------------------------------------------------------------------------------------
# The host's admins link to the ledger
# --------------------------------------------------------------------------------------------


def test_host_admins_link_rows_to_their_corrections(undone, superuser_client):
    c = superuser_client
    visit_event = CorrectionEvent.objects.filter(batch_id=undone.batch, entity_kind="visit")[0]
    work_event = CorrectionEvent.objects.filter(
        batch_id=undone.batch, entity_kind="completed_work"
    )[0]
    visit_link = corrections_url(UserVisit, visit_event.entity_id)
    work_link = corrections_url(CompletedWork, work_event.entity_id)
    assert visit_link.endswith(f"?visit_id={visit_event.entity_id}")
    assert work_link.endswith(f"?completed_work_id={work_event.entity_id}")

    visits = _page(c, reverse("admin:opportunity_uservisit_changelist"))
    assert f'href="{visit_link}"' in visits
    works = _page(c, reverse("admin:opportunity_completedwork_changelist"))
    assert f'href="{work_link}"' in works

    page = _page(c, reverse("admin:opportunity_uservisit_change", args=[visit_event.entity_id]))
    assert "2 events</a> in the corrections ledger" in page  # the flip and its undo
    work_events = CorrectionEvent.objects.filter(completed_work_id=work_event.entity_id).count()
    page = _page(c, reverse("admin:opportunity_completedwork_change", args=[work_event.entity_id]))
    assert f"{work_events} events of this work and its visits</a>" in page

    # The link leads to exactly those events.
    listed = c.get(work_link).context["cl"].result_list
    assert len(listed) == work_events


def test_host_admin_links_need_the_ledger_permission(undone, db):
    staff = User.objects.create_user(username="pm", password="x", is_staff=True)
    staff.user_permissions.add(
        Permission.objects.get(codename="view_uservisit", content_type__app_label="opportunity")
    )
    client = Client()
    client.force_login(staff)
    visits = _page(client, reverse("admin:opportunity_uservisit_changelist"))
    assert "ledger-corrections" not in visits and "visit_id=" not in visits


def test_the_mixin_works_with_fieldsets(undone, root):
    class WithFieldsets(CorrectionsLinkMixin, django_admin.ModelAdmin):
        fieldsets = ((None, {"fields": ("status",)}),)

    model_admin = WithFieldsets(UserVisit, django_admin.site)
    request = RequestFactory().get("/")
    request.user = root
    visit = UserVisit.objects.first()
    fieldsets = model_admin.get_fieldsets(request, visit)
    assert fieldsets[-1] == ("Corrections ledger", {"fields": ("ledger_corrections_record",)})
    assert model_admin.get_fieldsets(request, None) == WithFieldsets.fieldsets
    assert "ledger_corrections" in model_admin.get_list_display(request)
    with pytest.raises(TypeError):
        corrections_url(CorrectionBatch, 1)
