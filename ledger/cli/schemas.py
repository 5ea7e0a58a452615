"""The published JSON Schema of every ``--json`` output of ``corrections``.

Each output is a msgspec Struct; :data:`OUTPUTS` names them, :func:`document` is what
``corrections schema`` prints (JSON Schema draft 2020-12: one ``$defs`` section and, under
``outputs``, a ``$ref`` per output), and :func:`output_schema` is the standalone schema of
one output. ``docs/json-schema.md`` says what the fields mean; the test suite validates every
real output against these schemas.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ledger.anchors import Anchor
from ledger.export import CheckResult
from ledger.schema import (
    ApproveReport,
    DiscardReport,
    ErrorReport,
    EventRecord,
    PlanReport,
    RunReport,
    ScanReport,
)
from ledger.selectors import BatchDetail, BatchList, HistoryReport
from ledger.verify import VerifyReport

DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: Output name → (the Struct it encodes, the commands that print it).
OUTPUTS: dict[str, tuple[type, str]] = {
    "plan": (PlanReport, "plan over-cap --opportunity …, plan visits"),
    "scan": (ScanReport, "plan over-cap --all"),
    "run": (RunReport, "apply, undo, recompute"),
    "approve": (ApproveReport, "approve"),
    "discard": (DiscardReport, "discard"),
    "anchor": (Anchor, "anchor"),
    "batches": (BatchList, "batches"),
    "show": (BatchDetail, "show"),
    "history": (HistoryReport, "history"),
    "verify": (VerifyReport, "verify"),
    "check-export": (CheckResult, "check-export"),
    "export-line": (EventRecord, "export --format jsonl (one object per line)"),
    "error": (ErrorReport, "any command run with --json that fails"),
}


def _components() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    types = [struct for struct, _ in OUTPUTS.values()]
    return msgspec.json.schema_components(types, ref_template="#/$defs/{name}")


def document() -> dict[str, Any]:
    """Every output's schema in one document."""
    refs, defs = _components()
    return {
        "$schema": DIALECT,
        "$id": "corrections-json-output",
        "title": "JSON output of ./manage.py corrections",
        "outputs": {
            name: {**ref, "description": f"printed by: {commands}"}
            for (name, (_, commands)), ref in zip(OUTPUTS.items(), refs, strict=True)
        },
        "$defs": defs,
    }


def output_schema(name: str) -> dict[str, Any]:
    """A standalone schema for one output (its ``$ref`` with the shared ``$defs``)."""
    refs, defs = _components()
    ref = dict(zip(OUTPUTS, refs, strict=True))[name]
    return {"$schema": DIALECT, **ref, "$defs": defs}
