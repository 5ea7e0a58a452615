"""The ledger's records and the database guards that keep them honest.

* :class:`CorrectionBatch` — one reviewed correction: its planner, scope, reason, operators and
  lifecycle. State transitions (planned → applied → undone, planned → discarded) are enforced
  by a database trigger, and a batch can be reverted at most once (a unique one-to-one).
* :class:`PlannedChange` — what a planned batch would flip, with exclusions and why. Frozen by
  a trigger once its batch leaves ``planned``.
* :class:`CorrectionEvent` — one status flip. UPDATE, DELETE and TRUNCATE are refused by the
  database itself, so raw SQL cannot rewrite history either. Each event carries a hash chained
  to the previous event's (see :mod:`ledger.chain`).
* :class:`AccrualRecompute` — one row per (batch, access), written in the projection's
  transaction so a crash before the recompute finishes leaves visible, resumable work.

Entity, opportunity and access ids are plain integers, not foreign keys: history must outlive
host rows, and the ledger's migrations must not depend on the host's.
"""

from __future__ import annotations

import uuid

import pgtrigger
from django.db import models
from django.db.models import Q


class Planner(models.TextChoices):
    over_cap = "over_cap", "Over cap"
    visit_list = "visit_list", "Visit list"
    undo = "undo", "Undo"


class BatchState(models.TextChoices):
    planned = "planned", "Planned"
    applied = "applied", "Applied"
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


class RecomputeState(models.TextChoices):
    pending = "pending", "Pending"
    done = "done", "Done"


def _protect(name: str, operation) -> pgtrigger.Protect:
    return pgtrigger.Protect(name=name, operation=operation)


def _refuse_truncate(name: str) -> pgtrigger.Trigger:
    """pgtrigger's Protect is row-level; TRUNCATE needs a statement-level trigger."""
    return pgtrigger.Trigger(
        name=name,
        operation=pgtrigger.Truncate,
        level=pgtrigger.Statement,
        when=pgtrigger.Before,
        func="RAISE EXCEPTION 'pgtrigger: Cannot truncate % table', TG_TABLE_NAME;",
    )


class CorrectionBatch(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    planner = models.CharField(max_length=20, choices=Planner.choices)
    state = models.CharField(max_length=20, choices=BatchState.choices, default=BatchState.planned)
    scope = models.JSONField(default=dict, blank=True, help_text="Opportunities and options.")
    reason = models.TextField()
    ticket = models.CharField(max_length=200, blank=True, default="")
    planned_by = models.CharField(max_length=150)
    applied_by = models.CharField(max_length=150, blank=True, default="")
    plan_digest = models.CharField(max_length=64)
    reverts = models.OneToOneField(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="reverted_by",
        help_text="The batch this undo batch reverts; unique, so a batch is undone at most once.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    applied_at = models.DateTimeField(null=True, blank=True)
    undone_at = models.DateTimeField(null=True, blank=True)
    discarded_at = models.DateTimeField(null=True, blank=True)
    summary = models.JSONField(default=dict, blank=True)
    skipped_conflicts = models.JSONField(default=list, blank=True)

    class Meta:
        verbose_name_plural = "correction batches"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["state", "created_at"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(reason__regex=r"\S"), name="ledger_batch_reason_not_blank"
            ),
        ]
        triggers = [
            pgtrigger.FSM(
                name="ledger_batch_state_transitions",
                field="state",
                transitions=[
                    (BatchState.planned, BatchState.applied),
                    (BatchState.planned, BatchState.discarded),
                    (BatchState.applied, BatchState.undone),
                ],
            ),
            pgtrigger.ReadOnly(
                name="ledger_batch_identity_read_only",
                fields=[
                    "id",
                    "planner",
                    "scope",
                    "reason",
                    "ticket",
                    "planned_by",
                    "plan_digest",
                    "reverts",
                    "created_at",
                ],
            ),
            _protect("ledger_batch_no_delete", pgtrigger.Delete),
            _refuse_truncate("ledger_batch_no_truncate"),
        ]

    def __str__(self) -> str:
        return f"{self.planner} {self.id} ({self.state})"


_FROZEN_UNLESS_PLANNED = """
    IF (SELECT state FROM ledger_correctionbatch
        WHERE id = COALESCE(NEW.batch_id, OLD.batch_id)) IS DISTINCT FROM 'planned' THEN
        RAISE EXCEPTION 'ledger: planned changes of batch % are frozen',
            COALESCE(NEW.batch_id, OLD.batch_id) USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN COALESCE(NEW, OLD);
"""
# Inserts come by the hundred thousand: one check per statement over the new rows, not per row.
_INSERT_ONLY_WHILE_PLANNED = """
    IF EXISTS (
        SELECT 1 FROM new_rows n JOIN ledger_correctionbatch b ON b.id = n.batch_id
        WHERE b.state <> 'planned'
    ) THEN
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

    class Meta:
        indexes = [
            models.Index(fields=["batch", "entity_kind", "entity_id"]),
            models.Index(fields=["entity_kind", "entity_id"], name="ledger_planned_entity"),
        ]
        triggers = [
            pgtrigger.Trigger(
                name="ledger_planned_change_frozen",
                operation=pgtrigger.Update | pgtrigger.Delete,
                when=pgtrigger.Before,
                func=_FROZEN_UNLESS_PLANNED,
            ),
            pgtrigger.Trigger(
                name="ledger_planned_change_insert",
                operation=pgtrigger.Insert,
                level=pgtrigger.Statement,
                when=pgtrigger.After,
                referencing=pgtrigger.Referencing(new="new_rows"),
                func=_INSERT_ONLY_WHILE_PLANNED,
            ),
            _refuse_truncate("ledger_planned_change_no_truncate"),
        ]


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
    recorded_at = models.DateTimeField()
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["hash"], name="ledger_event_hash_unique")]
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
            _protect("ledger_event_append_only", pgtrigger.Update | pgtrigger.Delete),
            _refuse_truncate("ledger_event_no_truncate"),
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
    created_at = models.DateTimeField(auto_now_add=True)
    done_at = models.DateTimeField(null=True, blank=True)

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
            pgtrigger.FSM(
                name="ledger_recompute_state_transitions",
                field="state",
                transitions=[(RecomputeState.pending, RecomputeState.done)],
            ),
            pgtrigger.ReadOnly(
                name="ledger_recompute_identity_read_only",
                fields=["batch", "access_id", "opportunity_id", "accrual_before", "created_at"],
            ),
            _protect("ledger_recompute_no_delete", pgtrigger.Delete),
            _refuse_truncate("ledger_recompute_no_truncate"),
        ]
