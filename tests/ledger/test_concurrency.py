"""Live submissions keep arriving while a correction is applied."""

import datetime
import threading

import pytest
from django.db import connection

from commcare_connect.form_receiver.processor import process_deliver_unit
from commcare_connect.opportunity.models import CompletedWork, DeliverUnit, OpportunityAccess
from commcare_connect.opportunity.visit_import import update_payment_accrued_for_user
from ledger import testing


@pytest.mark.django_db(transaction=True)
def test_submissions_on_another_connection_during_apply(make_capped_access, run):
    access = make_capped_access(works=60, cap=10, deliver_units=2)
    forms = list(DeliverUnit.objects.filter(payment_unit__opportunity=access.opportunity))
    opp = str(access.opportunity.opportunity_id)
    plan = run("plan", "over-cap", "--opportunity", opp, "--reason", "x", "--json").json
    assert plan["totals"]["works"] == 50

    start = threading.Barrier(2)
    errors: list[BaseException] = []
    submitted: list[int] = []

    def submit() -> None:
        try:
            live = OpportunityAccess.objects.select_related("opportunity").get(pk=access.pk)
            start.wait()
            for n in range(15):
                received = datetime.datetime.now(datetime.UTC)
                for form in forms:
                    visit = process_deliver_unit(
                        live, form, xform_id=f"live-{n}-{form.pk}", entity_id=f"live-{n}",
                        visit_date=received, received_at=received,
                    )  # fmt: skip
                    submitted.append(visit.pk)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        finally:
            connection.close()

    worker = threading.Thread(target=submit)
    worker.start()
    start.wait()
    applied = run("apply", "--batch", plan["batch"], "--json")
    worker.join(timeout=120)

    assert not worker.is_alive()
    assert errors == []
    assert applied.code == 0, applied.err
    assert len(submitted) == 30
    # No lost update: every flipped entity still has the status its last event gave it.
    testing.assert_events_match_state()
    # And the accrual is what the host's own recompute gives now.
    access.refresh_from_db()
    accrued = access.payment_accrued
    update_payment_accrued_for_user(access, incremental=False)
    access.refresh_from_db()
    assert access.payment_accrued == accrued
    assert (
        CompletedWork.objects.filter(opportunity_access=access, status="over_limit").count() >= 50
    )
