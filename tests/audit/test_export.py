"""``corrections export`` / ``check-export``: streamed, chained, and every tampering caught."""

from __future__ import annotations

import csv
import io
import json

import pgtrigger
import pytest
from django.db import connection

from ledger import chain, export
from ledger.models import CorrectionEvent

from .conftest import insert_events, make_batch


def _export(run, *args) -> str:
    result = run("export", *args)
    assert result.code == 0, result.err
    assert result.err.startswith("exported ")
    return result.out


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_batch_export_checks_clean(undone, run, tmp_path, fmt):
    text = _export(run, "--batch", undone.batch, "--format", fmt)
    events = list(CorrectionEvent.objects.filter(batch_id=undone.batch).order_by("id"))
    if fmt == "jsonl":
        lines = [json.loads(line) for line in text.splitlines()]
    else:
        lines = list(csv.DictReader(io.StringIO(text)))
        assert list(lines[0]) == list(export.FIELDS)
    assert [int(line["id"]) for line in lines] == [e.pk for e in events]
    assert [line["hash"] for line in lines] == [e.hash for e in events]
    assert lines[0]["prev_hash"] == events[0].prev_hash

    result = export.check_export(_write(tmp_path, f"batch.{fmt}", text))
    assert result.ok, result.problem
    assert (result.format, result.events) == (fmt, 6)
    assert result.first_prev_hash == events[0].prev_hash and result.last_hash == events[-1].hash

    ok = run("check-export", str(tmp_path / f"batch.{fmt}"), "--no-anchors")
    assert ok.code == 0 and ok.out.startswith("OK: 6 events"), ok.err
    assert "not anchored (--no-anchors)" in ok.out


def test_time_range_export_starts_mid_chain(undone, run, tmp_path):
    undo_events = list(CorrectionEvent.objects.filter(batch_id=undone.undo).order_by("id"))
    text = _export(run, "--since", undone.after_apply.isoformat())
    assert [json.loads(line)["id"] for line in text.splitlines()] == [e.pk for e in undo_events]
    result = export.check_export(io.StringIO(text))
    assert result.ok and not result.starts_at_genesis
    applied_last = CorrectionEvent.objects.filter(batch_id=undone.batch).order_by("id").last()
    assert result.first_prev_hash == applied_last.hash  # the anchor into the live ledger

    both = _export(run, "--since", undone.before_apply.isoformat(), "--until",
                   undone.after_undo.isoformat(), "--format", "csv")  # fmt: skip
    assert export.check_export(io.StringIO(both)).events == 12
    only_apply = _export(run, "--since", undone.before_apply.isoformat(), "--until",
                         undone.after_apply.isoformat())  # fmt: skip
    assert len(only_apply.splitlines()) == 6
    empty = run("export", "--since", undone.after_undo.isoformat())
    assert empty.code == 0 and empty.out == "" and empty.err.startswith("exported 0 events")


def _jsonl(run, story) -> list[str]:
    return _export(run, "--batch", story.batch).splitlines(keepends=True)


def _check(tmp_path, lines) -> export.CheckResult:
    return export.check_export(_write(tmp_path, "x.jsonl", "".join(lines)))


def _edit(line: str, **changes) -> str:
    return json.dumps({**json.loads(line), **changes}) + "\n"


def test_edited_dropped_reordered_or_duplicated_lines_are_caught(applied, run, tmp_path):
    lines = _jsonl(run, applied)
    assert _check(tmp_path, lines).ok

    edited = lines.copy()
    edited[2] = _edit(edited[2], to_status="approved")
    result = _check(tmp_path, edited)
    assert not result.ok and result.first_bad_line == 3 and "edited" in result.problem

    retimed = lines.copy()
    retimed[0] = _edit(retimed[0], recorded_at="2026-01-01T00:00:00Z")
    assert _check(tmp_path, retimed).first_bad_line == 1

    dropped = lines[:1] + lines[2:]
    result = _check(tmp_path, dropped)
    assert not result.ok and result.first_bad_line == 2 and "dropped" in result.problem

    swapped = lines.copy()
    swapped[3], swapped[4] = swapped[4], swapped[3]
    result = _check(tmp_path, swapped)
    assert not result.ok and result.first_bad_line == 4

    duplicated = lines[:3] + lines[2:]
    assert _check(tmp_path, duplicated).first_bad_line == 4

    # The id is hashed (format 3): a renumbered line no longer matches its hash.
    renumbered = lines.copy()
    renumbered[5] = _edit(renumbered[5], id=1)
    result = _check(tmp_path, renumbered)
    assert result.first_bad_line == 6 and "edited" in result.problem


def test_csv_edit_and_reorder_are_caught(applied, run, tmp_path):
    rows = _export(run, "--batch", applied.batch, "--format", "csv").splitlines(keepends=True)
    edited = rows.copy()
    edited[3] = edited[3].replace("over_limit", "rejected", 1)
    bad = export.check_export(_write(tmp_path, "e.csv", "".join(edited)))
    assert not bad.ok and bad.first_bad_line == 4 and "edited" in bad.problem
    swapped = rows.copy()
    swapped[2], swapped[3] = swapped[3], swapped[2]
    bad = export.check_export(_write(tmp_path, "s.csv", "".join(swapped)))
    assert not bad.ok and bad.first_bad_line == 3


def test_dropped_ends_are_caught_by_anchors(applied, run, tmp_path):
    lines = _jsonl(run, applied)
    first_prev = json.loads(lines[0])["prev_hash"]
    last_hash = json.loads(lines[-1])["hash"]
    path = _write(tmp_path, "ends.jsonl", "".join(lines[1:-1]))
    assert export.check_export(path).ok  # a shorter segment on its own is consistent …
    head = run("check-export", str(path), "--first-prev", first_prev)
    assert head.code == 1 and "first line's prev_hash" in head.err
    tail = run("check-export", str(_write(tmp_path, "t.jsonl", "".join(lines[:-1]))),
               "--last-hash", last_hash)  # fmt: skip
    assert tail.code == 1 and "last line's hash" in tail.err


def test_check_export_command_names_first_bad_line(applied, run, tmp_path):
    lines = _jsonl(run, applied)
    del lines[2]
    path = _write(tmp_path, "bad.jsonl", "".join(lines))
    result = run("check-export", str(path))
    assert result.code == 1 and result.out == ""
    (line,) = result.err.strip().splitlines()
    assert line.startswith(f"corrections: check-export {path}: line 3 (event ")
    assert run("check-export", str(path), "--json").json["first_bad_line"] == 3


def test_unreadable_and_garbage_files(db, run, tmp_path):
    missing = run("check-export", str(tmp_path / "nope.jsonl"))
    assert missing.code == 3 and "cannot read" in missing.err
    garbage = run("check-export", str(_write(tmp_path, "g.jsonl", "{not json\n")))
    assert garbage.code == 1 and "line 1: not valid JSON" in garbage.err


def test_row_edited_in_the_database_fails_the_export_check(applied, run, tmp_path):
    target = CorrectionEvent.objects.filter(batch_id=applied.batch).order_by("id")[4]
    with pgtrigger.ignore("ledger.CorrectionEvent:ledger_event_append_only"):
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {CorrectionEvent._meta.db_table} SET from_status = 'pending' "
                "WHERE id = %s",
                [target.pk],
            )
    path = _write(tmp_path, "live.jsonl", _export(run, "--batch", applied.batch))
    result = run("check-export", str(path))
    assert result.code == 1 and "line 5" in result.err and f"event {target.pk}" in result.err
    verified = run("verify", "--json").json
    assert any(p["event_id"] == target.pk and p["check"] == "chain" for p in verified["problems"])


def test_streams_in_chunks(db):
    batch = make_batch()
    insert_events(batch, (
        {"entity_kind": "visit", "entity_id": i, "opportunity_id": 1 + i % 7,
         "from_status": "approved", "to_status": "over_limit", "xform_id": f"x-{i}"}
        for i in range(1, 3001)
    ))  # fmt: skip

    class Sink(io.StringIO):
        writes = 0

        def write(self, text):
            Sink.writes += 1
            return super().write(text)

    sink = Sink()
    summary = export.export_events(sink, batch=batch.pk, chunk_size=250)
    assert summary.events == 3000 and Sink.writes == 3000
    sink.seek(0)
    result = export.check_export(sink)
    assert result.ok and result.starts_at_genesis == (summary.first_prev_hash == chain.GENESIS)
