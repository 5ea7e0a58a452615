"""The demo tells the story within 100 columns, can run again on its database, and ends with
where to look in the admin."""

from __future__ import annotations

import io

from commcare_connect.demo import story


def test_the_demo_fits_100_columns_reruns_and_ends_at_the_admin(db, settings, tmp_path):
    from commcare_connect.users.models import User

    settings.LEDGER_ANCHOR_KEY = "demo-key-" + "0" * 40
    settings.LEDGER_ANCHOR_LOG = None  # the story then anchors by hand (applies in a test's
    # transaction do not anchor by themselves)
    for _ in range(2):  # again on the same database
        out = io.StringIO()
        story.run(out)
        text = out.getvalue()
        widest = max(text.splitlines(), key=len)
        assert len(widest) <= story.WIDTH, widest
        assert "Every accrual is back where it was." in text
        assert "Ledger verified: all checks passed." in text
        assert "By opportunity" in text and "worker Δ USD" in text
        tail = text[text.index("== 12. Look for yourself") :]
        assert "http://127.0.0.1:8000/admin/ledger/" in tail and "runserver" in tail
    admin, auditor = User.objects.get(username="admin"), User.objects.get(username="auditor")
    assert admin.is_superuser and admin.is_staff
    assert auditor.is_staff and not auditor.is_superuser
    codenames = set(auditor.get_all_permissions())
    assert codenames and all(p.split(".", 1)[1].startswith("view_") for p in codenames)
    password = tail.split(f"{'auditor':<8} password ", 1)[1].split()[0]
    assert auditor.check_password(password)
