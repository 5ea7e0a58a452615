"""The admin in a real browser: pages render with their styles, the links lead where they say,
refused lookups are refused, and screenshots of each page land in build/screenshots/.

The data is the over-cap incident as the demo's people handle it — amina plans, fatuma (finance)
approves, amina applies — then a PM re-approves one visit outside the ledger and the undo skips
that unit, so the batch is partially undone and one flip stays in effect.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Group

from commcare_connect.demo.incident import IncidentData, build_incident
from commcare_connect.demo.people import AUDITOR, OPERATOR, REVIEWER, ensure_people
from commcare_connect.opportunity.models import CompletedWork, UserVisit
from commcare_connect.users.models import User
from ledger import services
from ledger.models import CorrectionBatch, CorrectionEvent

from .conftest import PASSWORD

ROOT = "root"


@dataclass
class Scene:
    incident: IncidentData
    batch: str
    undo: str
    planned: str
    skipped_work: int
    skipped_visit: int


def _ids_at_production_scale() -> None:
    """Start ids where a production ledger has them, so the pages are judged with wide ids."""
    from django.db import connection

    tables = {
        CorrectionEvent._meta.db_table: 4_200_000,
        UserVisit._meta.db_table: 9_800_000,
        CompletedWork._meta.db_table: 3_100_000,
        "opportunity_opportunityaccess": 480_000,
    }
    with connection.cursor() as cursor:
        for table, start in tables.items():
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence(%s, 'id'), "
                "GREATEST(%s, (SELECT last_value FROM pg_sequences WHERE sequencename = "
                "split_part(pg_get_serial_sequence(%s, 'id'), '.', 2))))",
                [table, start, table],
            )


@pytest.fixture
def scene(browser) -> Scene:
    _ids_at_production_scale()
    incident = build_incident()
    people = ensure_people()
    for user in people.values():
        user.set_password(PASSWORD)
        user.save()
    User.objects.create_superuser(username=ROOT, email="root@example.org", password=PASSWORD)

    opportunities = [str(u) for u in incident.opportunity_uuids]
    plan = services.plan_over_cap(
        opportunities,
        reason="Over-cap incident: visits past the cap were auto-approved while the duplicate "
        "flag was off",
        operator=OPERATOR,
        ticket="CI-639",
    )
    services.approve_batch(plan.batch, operator=REVIEWER, plan_digest=plan.plan_digest)
    services.apply_batch(plan.batch, operator=OPERATOR)

    # A PM approves one corrected visit again in the review screen, outside the ledger.
    work = incident.over_cap_work_ids["w1"]
    visit = UserVisit.objects.filter(completed_work_id=work, status="over_limit").order_by("id")[0]
    UserVisit.objects.filter(pk=visit.pk).update(status="approved")
    undo = services.undo_batch(
        plan.batch, reason="PM review: rehearse the rollback", operator=OPERATOR,
        skip_conflicts=True,
    )  # fmt: skip

    # A later correction of one opportunity, planned and waiting for review.
    later = services.plan_over_cap(
        [str(incident.opportunity_a.opportunity_id)],
        reason="Second pass over opportunity A",
        operator=OPERATOR,
        ticket="CI-640",
    )
    return Scene(incident, plan.batch, undo.batch, later.batch, work, visit.pk)


def _css(driver, selector: str, prop: str) -> str:
    return driver.execute_script(
        "return getComputedStyle(document.querySelector(arguments[0]))[arguments[1]]",
        selector,
        prop,
    )


def _styled(driver) -> None:
    """The admin's stylesheet and the ledger's reached the browser (served without DEBUG)."""
    header = _css(driver, "#header", "backgroundColor")
    assert header not in ("", "rgba(0, 0, 0, 0)"), "admin CSS missing"
    sheets = driver.execute_script("return Array.from(document.styleSheets).map(s => s.href || '')")
    assert any(s.endswith("/static/ledger/admin.css") for s in sheets), sheets
    assert driver.execute_script(
        "return Array.from(document.styleSheets).every(s => { try { return s.cssRules.length > 0 }"
        " catch (e) { return false } })"
    ), "a stylesheet failed to load"


def _rows(driver) -> int:
    from selenium.webdriver.common.by import By

    return len(driver.find_elements(By.CSS_SELECTOR, "#result_list tbody tr"))


def _visible_rows(driver) -> int:
    """Rows of the result list wholly inside the window."""
    return driver.execute_script(
        "const h = window.innerHeight; return Array.from("
        "document.querySelectorAll('#result_list tbody tr')).filter("
        "r => r.getBoundingClientRect().bottom <= h).length"
    )


def _fits(driver) -> None:
    """The page is no wider than the window, and the list no wider than its box."""
    width = driver.execute_script("return document.documentElement.scrollWidth")
    inner = driver.execute_script("return window.innerWidth")
    assert width <= inner, f"page is {width}px wide in a {inner}px window"
    box = driver.execute_script(
        "const r = document.querySelector('#changelist-form .results');"
        "return [r.scrollWidth, r.clientWidth]"
    )
    assert box[0] <= box[1], f"the list is {box[0]}px wide in a {box[1]}px box"


def test_batch_list_and_batch_page(browser, scene):
    from selenium.webdriver.common.by import By

    browser.login(ROOT)
    d = browser.get("/admin/ledger/correctionbatch/")
    _styled(d)
    _fits(d)
    assert _rows(d) == 3
    body = browser.text()
    short = scene.batch[:8]
    expected = (short, scene.undo[:8], "partially undone", "amina", "fatuma", "CI-639",
                "Over-cap incident", f"undone by {scene.undo[:8]}", f"reverts {short}")  # fmt: skip
    for text in expected:
        assert text in body, text
    assert scene.batch not in body  # ids are shortened in the list …
    row = d.find_element(By.XPATH, f"//tr[.//span[@title='{scene.batch}']]")
    browser.shot("01-batch-list")
    height = row.size["height"]
    assert height < 40, f"a batch row is {height}px high"

    # The batch page: lifecycle, the priced plan with its tables and chart, outcomes.
    browser.follow(row.find_element(By.CSS_SELECTOR, "th a, td a"))
    assert scene.batch in d.current_url
    _styled(d)
    body = browser.text()
    for text in ("Lifecycle", "Planned", "Approved", "Applied", "fatuma", "Priced plan",
                 "Totals by currency", "USD", "KES", "all currencies", "By opportunity",
                 "Per access", "Excluded (not flipped)", "Accrual change per opportunity",
                 "Outcomes", "as projected", "Scope", "include paid works", "Events",
                 "skipped by the undo", scene.undo):  # fmt: skip
        assert text in body, text
    chart = d.find_element(By.CSS_SELECTOR, "figure.ledger-chart svg")
    assert chart.size["width"] > 300 and chart.size["height"] > 40
    assert len(chart.find_elements(By.CSS_SELECTOR, "rect.worker")) == 2  # two opportunities
    assert len(d.find_elements(By.CSS_SELECTOR, "#plan table.ledger-table")) >= 4
    assert "History" not in d.find_element(By.CSS_SELECTOR, ".object-tools").text
    browser.shot("02-batch-page", full=True)

    # Its object tools lead to the batch's events, planned changes and recomputes.
    browser.follow(d.find_element(By.CSS_SELECTOR, ".object-tools a[href*='accrualrecompute']"))
    assert f"batch__id__exact={scene.batch}" in d.current_url
    assert _rows(d) > 0
    links = d.find_elements(By.CSS_SELECTOR, "#result_list td.field-batch_column a")
    assert links and all(a.text == scene.batch[:8] for a in links)
    browser.shot("05-recompute-list")
    browser.follow(links[0])
    assert scene.batch in d.current_url and "Priced plan" in browser.text()


def test_event_list_and_event_page(browser, scene):
    from selenium.webdriver.common.by import By

    browser.login(ROOT)
    d = browser.get("/admin/ledger/correctionevent/")
    browser.shot("03-event-list")
    _styled(d)
    _fits(d)
    events = CorrectionEvent.objects.count()
    assert _rows(d) == events
    visible = _visible_rows(d)
    assert visible >= 15, f"only {visible} events fit the window"
    body = browser.text().lower()
    for text in ("applied by", "amina", "over-cap incident", "undone by", "inverts",
                 "skipped by undo", "visit", "work"):  # fmt: skip
        assert text in body, text

    # An event the undo skipped: its page says so, and why.
    skipped = CorrectionEvent.objects.get(
        batch_id=scene.batch, entity_kind="completed_work", entity_id=scene.skipped_work
    )
    browser.follow(d.find_element(By.LINK_TEXT, str(skipped.pk)))
    _styled(d)
    body = browser.text()
    for text in ("Lineage", "Skipped by undo batch", scene.undo[:8], "still in effect",
                 f"visit {scene.skipped_visit}", "Every event of this completed work",
                 "Hash chain", skipped.hash, "Members"):  # fmt: skip
        assert text in body, text
    assert "History" not in d.find_element(By.CSS_SELECTOR, ".object-tools").text
    browser.shot("04-event-page-skipped-by-undo", full=True)

    # An event the undo inverted links to its inverse, and back.
    inverted = CorrectionEvent.objects.filter(batch_id=scene.batch, inverted_by__isnull=False)[0]
    inverse = CorrectionEvent.objects.get(inverts=inverted)
    browser.get(f"/admin/ledger/correctionevent/{inverted.pk}/change/")
    assert "Undone by" in browser.text()
    browser.follow(d.find_element(By.LINK_TEXT, f"#{inverse.pk}"))
    assert f"/{inverse.pk}/change/" in d.current_url
    assert "Inverts" in browser.text()
    browser.shot("04b-event-page-undo-event", full=True)

    # The "History" address leads back to the ledger's own page, not Django's empty log.
    browser.get(f"/admin/ledger/correctionevent/{inverse.pk}/history/")
    assert d.current_url.endswith(f"/{inverse.pk}/change/")


def test_filters_links_and_refused_lookups(browser, scene):
    from selenium.webdriver.common.by import By

    browser.login(ROOT)
    # Filtering by batch through the sidebar box.
    d = browser.get("/admin/ledger/correctionevent/")
    box = d.find_element(By.CSS_SELECTOR, "input[name=batch__id__exact]")
    box.send_keys(scene.undo)
    browser.follow(box, submit=True)
    assert f"batch__id__exact={scene.undo}" in d.current_url
    assert _rows(d) == CorrectionEvent.objects.filter(batch_id=scene.undo).count()
    # Narrowing filters appear once a selection is made.
    assert d.find_elements(By.PARTIAL_LINK_TEXT, "over_limit")

    # A search by the short batch id shown in the lists.
    d = browser.get(f"/admin/ledger/correctionevent/?q={scene.batch[:8]}")
    assert _rows(d) == CorrectionEvent.objects.filter(batch_id=scene.batch).count()

    # An unindexed lookup is refused, with a message, and the list is not filtered by it.
    d = browser.get("/admin/ledger/correctionevent/?reason__icontains=over")
    assert "reason__icontains" not in d.current_url
    message = d.find_element(By.CSS_SELECTOR, "ul.messagelist li.error").text
    assert "reason__icontains" in message and "not a lookup this list offers" in message
    browser.shot("06-refused-lookup")
    # … and so is a narrowing filter on its own.
    d = browser.get("/admin/ledger/correctionevent/?to_status=over_limit")
    message = d.find_element(By.CSS_SELECTOR, "ul.messagelist li.error").text
    assert "to_status" in message and "narrows a selection" in message


def test_host_admin_links_into_the_ledger(browser, scene):
    from selenium.webdriver.common.by import By

    browser.login(ROOT)
    d = browser.get(f"/admin/opportunity/uservisit/?q={scene.incident.opportunity_a.name}")
    _styled_host(d)
    visit = scene.skipped_visit
    d = browser.get(f"/admin/opportunity/uservisit/{visit}/change/")
    record = d.find_element(By.CSS_SELECTOR, ".field-ledger_corrections_record a")
    assert "event" in record.text
    browser.get("/admin/opportunity/uservisit/")
    row = d.find_element(By.XPATH, f"//tr[.//a[contains(@href, '/uservisit/{visit}/')]]")
    browser.follow(row.find_element(By.LINK_TEXT, "corrections"))
    assert f"visit_id={visit}" in d.current_url
    expected = CorrectionEvent.objects.filter(entity_kind="visit", entity_id=visit).count()
    assert expected and _rows(d) == expected
    browser.shot("07-visit-corrections")

    work = scene.skipped_work
    d = browser.get("/admin/opportunity/completedwork/")
    browser.shot("08-host-completed-work-list")
    row = d.find_element(By.XPATH, f"//tr[.//a[contains(@href, '/completedwork/{work}/')]]")
    browser.follow(row.find_element(By.LINK_TEXT, "corrections"))
    assert f"completed_work_id={work}" in d.current_url
    work_events = CorrectionEvent.objects.filter(completed_work_id=work).count()
    assert _rows(d) == work_events and work_events > 1  # the work's and its visits'
    assert CompletedWork.objects.filter(pk=work).exists()


def _styled_host(driver) -> None:
    header = _css(driver, "#header", "backgroundColor")
    assert header not in ("", "rgba(0, 0, 0, 0)")


def test_view_only_auditor(browser, scene):
    from selenium.webdriver.common.by import By

    auditor = User.objects.get(username=AUDITOR)
    assert auditor.groups.filter(name="Ledger auditors").exists()
    assert not auditor.is_superuser and auditor.is_staff
    browser.login(AUDITOR)
    d = browser.get("/admin/")
    body = browser.text()
    for model in ("Correction batches", "Correction events", "Planned changes",
                  "Accrual recomputes", "Batch entries"):  # fmt: skip
        assert model in body, model
    assert "Add" not in [a.text for a in d.find_elements(By.CSS_SELECTOR, "a.addlink")]
    browser.shot("09-auditor-index")

    d = browser.get(f"/admin/ledger/correctionbatch/{scene.batch}/change/")
    assert "Priced plan" in browser.text()
    assert not d.find_elements(By.CSS_SELECTOR, "input[name=_save], .deletelink")
    d = browser.get(f"/admin/ledger/correctionevent/?completed_work_id={scene.skipped_work}")
    assert _rows(d) > 1
    # Host rows are not the auditor's to see; the ledger's record is.
    d = browser.get("/admin/opportunity/uservisit/")
    assert "403" in d.title or "Forbidden" in browser.text() or "Log in" in d.title
    assert CorrectionBatch.objects.filter(pk=scene.batch).exists()
    assert (
        not Group.objects.get(name="Ledger auditors")
        .permissions.exclude(codename__startswith="view_")
        .exists()
    )
