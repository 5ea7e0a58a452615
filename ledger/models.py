"""The ledger's records and the database guards that keep them honest.

* :class:`CorrectionBatch` — one reviewed correction: its planner, scope, reason, operators and
  lifecycle. A batch is inserted only as planned, with the database's time; state transitions
  (planned → applied → undone, with partially_undone between when an undo skipped units;
  planned → discarded) are enforced by a database trigger. Each event is
  inverted at most once (a unique one-to-one between events), so no batch is undone twice.
* :class:`PlannedChange` — what a planned batch would flip, with exclusions and why. Frozen by
  a trigger once its batch leaves ``planned``.
* :class:`CorrectionEvent` — one status flip. UPDATE, DELETE and TRUNCATE are refused by the
  database itself, so raw SQL cannot rewrite history either; new events come in the current
  hash format and never recorded before the event they follow. Each event carries a hash
  chained to the previous event's (see :mod:`ledger.chain`).
* :class:`AccrualRecompute` — one row per (batch, access), written in the projection's
  transaction so a crash before the recompute finishes leaves visible, resumable work.
* :class:`LedgerHead` — one row: the chain's head. Locking it serialises every ledger write, so
  event ids, chain order and database-clock times agree whatever the isolation level.

Entity, opportunity and access ids are plain integers, not foreign keys: history must outlive
host rows, and the ledger's migrations must not depend on the host's.
"""

from __future__ import annotations

import uuid

import pgtrigger
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from ledger import chain, digests, guards


class Planner(models.TextChoices):
    over_cap = "over_cap", "Over cap"
    visit_list = "visit_list", "Visit list"
    undo = "undo", "Undo"


class BatchState(models.TextChoices):
    planned = "planned", "Planned"
    applied = "applied", "Applied"
    partially_undone = "partially_undone", "Partially undone"
    undone = "undone", "Undone"
    discarded = "discarded", "Discarded"


class EntityKind(models.TextChoices):
    visit = "visit", "Visit"
    completed_work = "completed_work", "Completed work"


class ExclusionReason(models.TextChoices):
    paid = "paid", "Already paid"
    invoiced = "invoiced", "Already invoiced"
    rejected = "rejected", "Rejected work"
    operator = "operator_excluded", "On the operator's exclusion list"
    suspended = "suspended", "Suspended access (skipped on request)"
    trial = "trial", "Trial visit (never flipped)"
    already_target = "already_target", "Already has the target status"
    would_not_hold = "would_not_hold", "The host's recompute would not keep the planned status"


class RecomputeState(models.TextChoices):
    pending = "pending", "Pending"
    done = "done", "Done"


class RecomputeProblem(models.TextChoices):
    """Why a recompute's last attempt did not finish it."""

    busy = "busy"  # live traffic held its rows or lock, or the lock backend was unreachable
    failed = "failed"  # the host's recompute raised; tried again only by a new run


class CorrectionBatch(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    planner = models.CharField(max_length=20, choices=Planner.choices)
    state = models.CharField(max_length=20, choices=BatchState.choices, default=BatchState.planned)
    scope = models.JSONField(default=dict, blank=True, help_text="Opportunities and options.")
    reason = models.TextField()
    ticket = models.CharField(max_length=200, blank=True, default="")
    planned_by = models.CharField(max_length=150, help_text="Username of who planned it.")
    approved_by = models.CharField(
        max_length=150, blank=True, default="", help_text="Who reviewed the priced plan."
    )
    approved_at = models.DateTimeField(null=True, blank=True)
    applied_by = models.CharField(max_length=150, blank=True, default="")
    plan_digest = models.CharField(max_length=64)
    digest_format = models.SmallIntegerField(
        default=digests.CURRENT_FORMAT,
        help_text="Which encoding the plan digest covers (ledger.digests).",
    )
    reverts = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="reverted_by",
        help_text="The batch this undo batch reverts (an undo that skipped units leaves the "
        "rest for a later undo; each event is inverted at most once).",
    )
    created_at = models.DateTimeField(db_default=Now())
    applied_at = models.DateTimeField(null=True, blank=True)
    undone_at = models.DateTimeField(null=True, blank=True)
    discarded_at = models.DateTimeField(null=True, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    skipped_conflicts = models.JSONField(default=list, blank=True)

    class Meta:
        verbose_name_plural = "correction batches"
        ordering = ["-created_at"]
        permissions = [
            ("plan_correction", "Can plan corrections"),
            ("approve_correction", "Can approve a correction someone else planned"),
            ("apply_correction", "Can apply and undo corrections"),
        ]
        indexes = [
            models.Index(fields=["state", "created_at"]),
            models.Index(fields=["planner", "created_at"], name="ledger_batch_planner"),
            models.Index(fields=["ticket"], name="ledger_batch_ticket"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(reason__regex=r"\S"), name="ledger_batch_reason_not_blank"
            ),
        ]
        triggers = [
            guards.FSM(
                name="ledger_batch_state_transitions",
                field="state",
                transitions=[
                    (BatchState.planned, BatchState.applied),
                    (BatchState.planned, BatchState.discarded),
                    (BatchState.applied, BatchState.undone),
                    (BatchState.applied, BatchState.partially_undone),
                    (BatchState.partially_undone, BatchState.undone),
                ],
            ),
            guards.ReadOnly(
                name="ledger_batch_identity_read_only",
                fields=[
                    "id",
                    "planner",
                    "scope",
                    "reason",
                    "ticket",
                    "planned_by",
                    "plan_digest",
                    "digest_format",
                    "reverts",
                    "created_at",
                    "summary",
                ],
            ),
            guards.set_once(
                "ledger_batch_lifecycle_set_once",
                {
                    "approved_by": "OLD.approved_by = ''",
                    "approved_at": "OLD.approved_at IS NULL",
                    "applied_by": "OLD.applied_by = ''",
                    "applied_at": "OLD.applied_at IS NULL",
                    "undone_at": "OLD.undone_at IS NULL",
                    "discarded_at": "OLD.discarded_at IS NULL",
                    "skipped_conflicts": "OLD.state = 'planned'",
                },
            ),
            guards.insert_only_when(
                "ledger_batch_insert",
                {
                    "NEW.state = 'planned'": "a batch is inserted as planned",
                    "NEW.approved_by = '' AND NEW.approved_at IS NULL AND NEW.applied_by = '' "
                    "AND NEW.applied_at IS NULL AND NEW.undone_at IS NULL "
                    "AND NEW.discarded_at IS NULL AND NEW.skipped_conflicts = '[]'::jsonb": (
                        "a new batch is not approved, applied, undone or discarded yet"
                    ),
                    "NEW.created_at = statement_timestamp()": (
                        "a new batch records the database's time (created_at is its default)"
                    ),
                    f"NEW.digest_format = {digests.CURRENT_FORMAT}": (
                        f"a new batch's plan digest is in format {digests.CURRENT_FORMAT}"
                    ),
                },
            ),
            guards.protect("ledger_batch_no_delete", pgtrigger.Delete),
            guards.refuse_truncate("ledger_batch_no_truncate"),
        ]

    def __str__(self) -> str:
        return f"{self.planner} {self.id} ({self.state})"


# The batch table is read through the schema of the table the trigger fires on: a temporary
# table of the session named like it is never what a guard reads (ledger.guards).
_BATCHES = CorrectionBatch._meta.db_table
_FROZEN_UNLESS_PLANNED = f"""
    EXECUTE format('SELECT state FROM %I.{_BATCHES} WHERE id = $1', TG_TABLE_SCHEMA)
        INTO _state USING COALESCE(NEW.batch_id, OLD.batch_id);
    IF _state IS DISTINCT FROM 'planned' THEN
        RAISE EXCEPTION 'ledger: planned changes of batch % are frozen',
            COALESCE(NEW.batch_id, OLD.batch_id) USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN COALESCE(NEW, OLD);
"""
# Inserts come by the hundred thousand: one check per statement over the new rows, not per row.
_INSERT_ONLY_WHILE_PLANNED = f"""
    EXECUTE format(
        'SELECT EXISTS (SELECT 1 FROM new_rows n JOIN %I.{_BATCHES} b ON b.id = n.batch_id '
        'WHERE b.state <> ''planned'')', TG_TABLE_SCHEMA) INTO _late;
    IF _late THEN
        RAISE EXCEPTION 'ledger: planned changes can only be added to a planned batch'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NULL;
"""


class PlannedChange(models.Model):
    """One entity a planned batch would flip (or deliberately leaves alone: ``excluded``)."""

    batch = models.ForeignKey(
        CorrectionBatch, on_delete=models.PROTECT, related_name="changes", db_index=False
    )
    entity_kind = models.CharField(max_length=20, choices=EntityKind.choices)
    entity_id = models.BigIntegerField()
    completed_work_id = models.BigIntegerField(null=True, blank=True)
    opportunity_id = models.BigIntegerField()
    access_id = models.BigIntegerField(null=True, blank=True)
    xform_id = models.CharField(max_length=50, null=True, blank=True)
    from_status = models.CharField(max_length=50)
    to_status = models.CharField(max_length=50)
    excluded = models.CharField(
        max_length=20, choices=ExclusionReason.choices, blank=True, default=""
    )
    suspended = models.BooleanField(default=False)
    prev_event_id = models.BigIntegerField(
        null=True, blank=True, help_text="The entity's latest ledger event when planned."
    )
    members = models.TextField(
        null=True, blank=True, help_text="A work's visits when planned: 'id:status,…' by id."
    )
    paid = models.BooleanField(default=False, help_text="The unit's work was paid when planned.")
    invoiced = models.BooleanField(
        default=False, help_text="The unit's work was invoiced when planned."
    )

    class Meta:
        indexes = [
            models.Index(fields=["batch", "entity_kind", "entity_id"]),
            models.Index(fields=["entity_kind", "entity_id"], name="ledger_planned_entity"),
        ]
        triggers = [
            guards.Trigger(
                name="ledger_planned_change_frozen",
                operation=pgtrigger.Update | pgtrigger.Delete,
                when=pgtrigger.Before,
                declare=[("_state", "TEXT")],
                func=_FROZEN_UNLESS_PLANNED,
            ),
            guards.Trigger(
                name="ledger_planned_change_insert",
                operation=pgtrigger.Insert,
                level=pgtrigger.Statement,
                when=pgtrigger.After,
                referencing=pgtrigger.Referencing(new="new_rows"),
                declare=[("_late", "BOOLEAN")],
                func=_INSERT_ONLY_WHILE_PLANNED,
            ),
            guards.refuse_truncate("ledger_planned_change_no_truncate"),
        ]


# One check per statement (an apply COPYs a batch's events in one), over the new rows and their
# neighbours in id order: the new events use the current hash format, none is recorded in the
# future, and ``recorded_at`` never decreases along the chain.
_EVENTS_APPEND_IN_TIME = f"""
    IF EXISTS (SELECT 1 FROM new_rows WHERE hash_format IS DISTINCT FROM {chain.CURRENT_FORMAT})
    THEN
        RAISE EXCEPTION 'ledger: events are written in hash format {chain.CURRENT_FORMAT}'
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF EXISTS (SELECT 1 FROM new_rows WHERE recorded_at > clock_timestamp()) THEN
        RAISE EXCEPTION 'ledger: an event cannot be recorded in the future'
            USING ERRCODE = 'restrict_violation';
    END IF;
    SELECT min(id), max(id) INTO _lo, _hi FROM new_rows;
    EXECUTE format('SELECT max(id) FROM %I.%I WHERE id < $1', TG_TABLE_SCHEMA, TG_TABLE_NAME)
        INTO _from USING _lo;
    EXECUTE format('SELECT min(id) FROM %I.%I WHERE id > $1', TG_TABLE_SCHEMA, TG_TABLE_NAME)
        INTO _to USING _hi;
    EXECUTE format(
        'SELECT EXISTS (SELECT 1 FROM (SELECT recorded_at, '
        'lag(recorded_at) OVER (ORDER BY id) AS before FROM %I.%I WHERE id BETWEEN $1 AND $2) s '
        'WHERE s.recorded_at < s.before)', TG_TABLE_SCHEMA, TG_TABLE_NAME)
        INTO _backwards USING COALESCE(_from, _lo), COALESCE(_to, _hi);
    IF _backwards THEN
        RAISE EXCEPTION 'ledger: recorded_at never decreases along the chain'
            USING ERRCODE = 'restrict_violation',
                  DETAIL = 'An event is recorded before the one it follows in id order.';
    END IF;
    RETURN NULL;
"""


class CorrectionEvent(models.Model):
    # Indexed by (batch, id) below; a second index on batch alone would only slow inserts.
    batch = models.ForeignKey(
        CorrectionBatch, on_delete=models.PROTECT, related_name="events", db_index=False
    )
    entity_kind = models.CharField(max_length=20, choices=EntityKind.choices)
    entity_id = models.BigIntegerField()
    completed_work_id = models.BigIntegerField(null=True, blank=True)
    opportunity_id = models.BigIntegerField()
    access_id = models.BigIntegerField(null=True, blank=True)
    xform_id = models.CharField(max_length=50, null=True, blank=True)
    from_status = models.CharField(max_length=50)
    to_status = models.CharField(max_length=50)
    reason = models.TextField()
    inverts = models.OneToOneField(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="inverted_by",
        help_text="The event this undo event reverses.",
    )
    prior_status_modified_date = models.DateTimeField(null=True, blank=True)
    new_status_modified_date = models.DateTimeField(null=True, blank=True)
    recorded_at = models.DateTimeField(help_text="The database's clock, under the ledger lock.")
    prev_event_id = models.BigIntegerField(
        null=True, blank=True, help_text="The entity's previous ledger event (None: its first)."
    )
    members = models.TextField(
        null=True, blank=True, help_text="A work's visits after the flip: 'id:status,…' by id."
    )
    # No default: a writer names the format it hashed (a stale default would let a row claim
    # an encoding it was not hashed in).
    hash_format = models.SmallIntegerField(
        help_text="Which content encoding the hash covers (ledger.chain)."
    )
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["id"]
        # No index on ``hash``: nothing looks an event up by it, and random SHA-256 keys put
        # every insert on a random page of a large B-tree (a third of an apply's COPY).
        # Integrity is the chain itself: ``verify`` checks that each ``prev_hash`` is the
        # previous event's hash and each hash recomputes from the content, and the head row
        # and anchors pin the last one.
        indexes = [
            models.Index(fields=["entity_kind", "entity_id", "id"], name="ledger_event_entity"),
            models.Index(fields=["access_id", "id"], name="ledger_event_access"),
            models.Index(fields=["opportunity_id", "id"], name="ledger_event_opportunity"),
            models.Index(fields=["batch", "id"], name="ledger_event_batch"),
            models.Index(fields=["xform_id"], name="ledger_event_xform"),
            models.Index(fields=["completed_work_id", "id"], name="ledger_event_work"),
            models.Index(fields=["recorded_at", "id"], name="ledger_event_recorded"),
        ]
        triggers = [
            guards.protect("ledger_event_append_only", pgtrigger.Update | pgtrigger.Delete),
            guards.refuse_truncate("ledger_event_no_truncate"),
            guards.Trigger(
                name="ledger_event_insert",
                operation=pgtrigger.Insert,
                level=pgtrigger.Statement,
                when=pgtrigger.After,
                referencing=pgtrigger.Referencing(new="new_rows"),
                declare=[
                    ("_lo", "BIGINT"),
                    ("_hi", "BIGINT"),
                    ("_from", "BIGINT"),
                    ("_to", "BIGINT"),
                    ("_backwards", "BOOLEAN"),
                ],
                func=_EVENTS_APPEND_IN_TIME,
            ),
        ]

    def __str__(self) -> str:
        return f"{self.entity_kind} {self.entity_id}: {self.from_status} → {self.to_status}"


class AccrualRecompute(models.Model):
    batch = models.ForeignKey(CorrectionBatch, on_delete=models.PROTECT, related_name="recomputes")
    access_id = models.BigIntegerField()
    opportunity_id = models.BigIntegerField()
    state = models.CharField(
        max_length=10, choices=RecomputeState.choices, default=RecomputeState.pending
    )
    accrual_before = models.BigIntegerField(help_text="payment_accrued when projected.")
    accrual_after = models.BigIntegerField(null=True, blank=True)
    projected_after = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(db_default=Now())
    done_at = models.DateTimeField(null=True, blank=True)
    # Bookkeeping of the attempts that did not finish it (a done row keeps its history).
    attempts = models.IntegerField(
        db_default=0, default=0, help_text="Recompute attempts that did not finish it."
    )
    last_problem = models.CharField(
        max_length=10,
        choices=RecomputeProblem.choices,
        db_default="",
        default="",
        blank=True,
        help_text="Why the last attempt did not finish it: busy (tried again) or failed.",
    )
    last_error = models.TextField(db_default="", default="", blank=True)
    last_tried_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(
        null=True, blank=True, help_text="When it was last handed to the task queue."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["batch", "access_id"], name="ledger_recompute_once"),
        ]
        indexes = [
            models.Index(
                fields=["access_id"],
                name="ledger_recompute_pending",
                condition=Q(state="pending"),
            ),
            models.Index(fields=["access_id", "batch"], name="ledger_recompute_access"),
        ]
        triggers = [
            guards.FSM(
                name="ledger_recompute_state_transitions",
                field="state",
                transitions=[(RecomputeState.pending, RecomputeState.done)],
            ),
            guards.ReadOnly(
                name="ledger_recompute_identity_read_only",
                fields=[
                    "batch",
                    "access_id",
                    "opportunity_id",
                    "accrual_before",
                    "projected_after",
                    "created_at",
                ],
            ),
            guards.Trigger(
                name="ledger_recompute_done_is_final",
                operation=pgtrigger.Update,
                when=pgtrigger.Before,
                func="""
                    IF OLD.state = 'done' THEN
                        RAISE EXCEPTION 'ledger: recompute % is done and final', OLD.id
                            USING ERRCODE = 'restrict_violation';
                    END IF;
                    IF NEW.state = 'done' AND NEW.done_at IS NULL THEN
                        RAISE EXCEPTION 'ledger: a done recompute records when it was done'
                            USING ERRCODE = 'restrict_violation';
                    END IF;
                    RETURN NEW;
                """,
            ),
            guards.insert_only_when(
                "ledger_recompute_insert",
                {
                    "NEW.state = 'pending' AND NEW.accrual_after IS NULL AND NEW.done_at IS NULL": (
                        "a recompute is inserted pending; the recompute marks it done"
                    ),
                },
            ),
            guards.protect("ledger_recompute_no_delete", pgtrigger.Delete),
            guards.refuse_truncate("ledger_recompute_no_truncate"),
        ]


class LedgerHead(models.Model):
    """The chain's head, one row. ``SELECT … FOR UPDATE`` on it is the ledger's write lock.

    A row lock rather than an advisory lock: under REPEATABLE READ a head that moved after the
    transaction's snapshot makes the lock fail with a serialization error (retried), where an
    advisory lock would let the writer chain onto a stale head.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    event_id = models.BigIntegerField(null=True, blank=True)
    event_hash = models.CharField(max_length=64)
    events = models.BigIntegerField(default=0)
    entry_id = models.BigIntegerField(null=True, blank=True)
    entry_hash = models.CharField(max_length=64, default="0" * 64)
    entries = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="ledger_head_single_row")]
        triggers = [
            guards.protect("ledger_head_no_delete", pgtrigger.Delete),
            guards.refuse_truncate("ledger_head_no_truncate"),
        ]


class BatchAction(models.TextChoices):
    plan = "plan", "Planned"
    approve = "approve", "Approved"
    apply = "apply", "Applied"
    undo = "undo", "Undone"
    discard = "discard", "Discarded"


class BatchEntry(models.Model):
    """One step in a batch's life — planned, approved, applied, undone, discarded — as a chained,
    append-only entry naming the Django user who took it.

    The batch row's lifecycle columns are a convenience; these entries are the record, and
    ``verify`` holds the two to each other, so a forged operator or time is caught. They have
    their own hash chain (``ledger.chain``), in step with the events' through the chain head.
    """

    batch = models.ForeignKey(
        CorrectionBatch, on_delete=models.PROTECT, related_name="entries", db_index=False
    )
    action = models.CharField(max_length=10, choices=BatchAction.choices)
    actor = models.CharField(max_length=150, help_text="The user's username.")
    actor_id = models.BigIntegerField(help_text="The user's primary key.")
    at = models.DateTimeField(help_text="The database's clock, under the ledger lock.")
    details = models.TextField(help_text="Canonical JSON: what the step did (digests, counts).")
    hash_format = models.SmallIntegerField(default=2)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        verbose_name_plural = "batch entries"
        ordering = ["id"]
        indexes = [models.Index(fields=["batch", "id"], name="ledger_entry_batch")]
        triggers = [
            guards.protect("ledger_entry_append_only", pgtrigger.Update | pgtrigger.Delete),
            guards.refuse_truncate("ledger_entry_no_truncate"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.batch_id} by {self.actor}"
