"""A live form submitter, as one web worker process of the host would be.

Run by tests/ledger/test_live_traffic.py in several processes at once::

    DATABASE_NAME=test_… python -m tests.ledger.live_submitter STOP_FILE SEED ACCESS_ID… --form ID

With ``REDIS_URL`` set the host's accrual lock is its Redis lock (as in production), otherwise
a PostgreSQL advisory lock.

Submits forms through the host's processor (one transaction each, as under ATOMIC_REQUESTS)
until STOP_FILE exists, then prints one JSON line: submissions, failures, deadlocks and the
first few failures' messages.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import sys
import uuid


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("stop_file")
    parser.add_argument("seed", type=int)
    parser.add_argument("access_ids", type=int, nargs="+")
    parser.add_argument("--form", type=int, required=True)
    parser.add_argument("--cap", type=int, required=True)
    parser.add_argument("--works", type=int, required=True)
    parser.add_argument(
        "--new-only", action="store_true", help="Only new entities (no repeat of a planned work)."
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "commcare_connect.settings")
    import django

    django.setup()
    from commcare_connect.form_receiver.processor import process_deliver_unit
    from commcare_connect.opportunity.models import DeliverUnit, OpportunityAccess
    from ledger.retry import DEADLOCK, sqlstate

    rng = random.Random(args.seed)
    form = DeliverUnit.objects.get(pk=args.form)
    accesses = list(OpportunityAccess.objects.filter(pk__in=args.access_ids))
    done = failed = deadlocks = 0
    messages: list[str] = []
    n = 0
    while not os.path.exists(args.stop_file):
        access = rng.choice(accesses)
        n += 1
        if args.new_only or rng.random() < 0.5:
            entity = f"live-{args.seed}-{access.pk}-{n}"
        else:  # a repeat visit to a work past the cap, one the batch flips
            entity = f"e-{access.pk}-{rng.randrange(args.cap, args.works)}"
        try:
            process_deliver_unit(
                access, form, xform_id=str(uuid.uuid4()), entity_id=entity,
                visit_date=datetime.datetime.now(datetime.UTC),
            )  # fmt: skip
            done += 1
        except Exception as error:  # noqa: BLE001 - every failure is a finding
            failed += 1
            deadlocks += sqlstate(error) == DEADLOCK
            if len(messages) < 3:
                messages.append(f"{type(error).__name__}: {error}")
    print(json.dumps({"submitted": done, "failed": failed, "deadlocks": deadlocks,
                      "messages": messages}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
