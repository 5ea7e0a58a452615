"""The ledger's Celery tasks: accrual recomputes fanned out on the host's workers.

The host's Celery app finds this module by autodiscovery (``tasks.py`` of an installed app);
the ledger defines no app of its own. Celery is an optional dependency of the ledger
(``pip install commcare-correction-ledger[celery]``) and only this module imports it.

With ``LEDGER_RECOMPUTE = "celery"`` an apply or undo hands its batch's pending recomputes to
:func:`recompute_accesses`, a chunk of accesses per task, once its projection has committed.
Each access is recomputed with the host's code in a transaction of its own that also marks its
rows done (:func:`ledger.recomputes.finish`), so every task is idempotent and two workers may
run the same chunk at once: a row is claimed by one transaction and marked done only while
still pending. Messages are acknowledged after the task ran (``acks_late``) and given back
when the worker process dies (``reject_on_worker_lost``): a worker killed mid-chunk loses
nothing — the chunk is delivered again (at once, or for a killed worker node after the
broker's visibility timeout) and the accesses already done are skipped.

Arguments are JSON: a batch id as a string (or None: every batch's pending rows of those
accesses), access ids, and the time (seconds since the epoch) the chunk was first queued.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter

from celery import shared_task

from ledger import conf, recomputes

log = logging.getLogger("ledger.recompute")

FIRST_COUNTDOWN = 1.0  # seconds before a busy access is tried again; doubles each round
LONGEST_COUNTDOWN = 30.0


def countdown(round_: int) -> float:
    """Seconds before the ``round_``-th retry of busy accesses: growing, randomised."""
    return min(FIRST_COUNTDOWN * 2**round_, LONGEST_COUNTDOWN) * (0.5 + random.random())


@shared_task(
    name="ledger.recompute_accesses",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def recompute_accesses(
    self, batch_id: str | None, access_ids: list[int], started: float | None = None, round_: int = 0
) -> dict[str, int]:
    """Recompute each access of the chunk in a transaction of its own; never stop at one.

    Done and already-done accesses are counted; a failing one is recorded on its rows and
    logged, and the others go on; busy ones are queued again together with a growing
    countdown until ``LEDGER_RETRY_SECONDS`` after the chunk was first queued, then left
    pending with their problem recorded (``corrections recompute`` finishes them later).
    """
    started = started if started is not None else time.time()
    counts: Counter[str] = Counter()
    busy: list[int] = []
    for access_id in access_ids:
        outcome = recomputes.finish(int(access_id), batch_id)
        counts[outcome.state] += 1
        if outcome.state == "busy":
            busy.append(int(access_id))
    if busy:
        _again(batch_id, busy, started, round_)
    return dict(counts)


def _again(batch_id: str | None, busy: list[int], started: float, round_: int) -> None:
    if time.time() - started >= conf.get("RETRY_SECONDS"):
        log.warning(
            "gave up on %d busy accesses of batch %s after %.0f s (first: %s); "
            "they stay pending",
            len(busy), batch_id, time.time() - started, busy[0],
        )  # fmt: skip
        recomputes.dequeue(busy, batch_id)
        return
    try:
        recompute_accesses.apply_async(
            args=[batch_id, busy, started, round_ + 1], countdown=countdown(round_)
        )
    except Exception:  # the broker went away: leave them pending, out of the queue
        log.exception("could not queue %d busy accesses of batch %s again", len(busy), batch_id)
        recomputes.dequeue(busy, batch_id)


@shared_task(name="ledger.recompute_pending", acks_late=True, ignore_result=True)
def recompute_pending(batch_id: str | None = None) -> int:
    """Queue every pending recompute (of one batch, or all) again, in chunks: for a periodic
    sweep, or after the queue lost its messages. Harmless next to chunks already queued."""
    return recomputes.enqueue(batch_id)
