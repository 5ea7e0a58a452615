"""Exports that check what they claim: ids hashed, anchors signed and counted, no formulas.

A rewritten export must fail ``check-export --anchors`` however its ids are shifted; an anchor
line must be signed by a known key; the report says how many lines the anchors cover and a
file none covers fails unless ``--no-anchors`` is said; CSV cells never start a formula; a
line of a hash format this ledger does not know is a one-line refusal.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ledger import chain, export

from .conftest import TEST_ANCHOR_KEY, insert_events, make_batch


def _export(run, *args) -> str:
    result = run("export", *args)
    assert result.code == 0, result.err
    return result.out


def _rehash(lines: list[dict], *, shift: int = 0, gap: bool = False, **edit) -> list[dict]:
    """The lines re-chained from the first's prev_hash after an edit: what a forger with the
    export (and the hashing rule, which is public) can produce. Ids are shifted by ``shift``;
    with ``gap`` the last line's id moves one further (so the last id is skipped)."""
    out, prev = [], lines[0]["prev_hash"]
    for number, line in enumerate(lines):
        moved = shift + (1 if gap and number == len(lines) - 1 else 0)
        new = {**line, "id": line["id"] + moved, "prev_hash": prev}
        if number == 1:
            new.update(edit)
        new["hash"] = prev = chain.event_hash(prev, new)
        out.append(new)
    return out


def _write(path: Path, lines: list[dict]) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def test_a_rewritten_export_with_shifted_ids_fails_the_anchor_check(anchored, run, tmp_path):
    story, log = anchored
    lines = [json.loads(x) for x in _export(run, "--batch", story.batch).splitlines()]
    intact = run("check-export", _write(tmp_path / "intact.jsonl", lines), "--anchors", log)
    assert intact.code == 0, intact.err
    assert f"covers {len(lines)} lines" in intact.out
    assert f"{len(lines)} of {len(lines)} lines anchored" in intact.out

    # Re-hashed in place: the anchored last line no longer carries the anchored hash.
    rewritten = _rehash(lines, to_status="approved")
    in_place = run("check-export", _write(tmp_path / "a.jsonl", rewritten), "--anchors", log)
    assert in_place.code == 1 and "an external anchor recorded hash" in in_place.err

    # Re-hashed with every id shifted, so no line is an anchored event: nothing is covered.
    shifted = _rehash(lines, shift=1000, to_status="approved")
    result = run("check-export", _write(tmp_path / "b.jsonl", shifted), "--anchors", log)
    assert result.code == 1, result.out
    assert "no anchor covers any line of the file" in result.err
    body = run("check-export", str(tmp_path / "b.jsonl"), "--anchors", log, "--json").json
    assert body["anchored_lines"] == 0 and body["anchors"][0]["lines"] == 0

    # Renumbered so the anchored id falls inside the file with no line for it: caught too.
    inside = _rehash(lines, gap=True, to_status="approved")
    result = run("check-export", _write(tmp_path / "c.jsonl", inside), "--anchors", log)
    assert result.code == 1 and "ids shifted" in result.err


def test_an_export_no_anchor_covers_fails_unless_told_no_anchors(applied, run, tmp_path):
    path = tmp_path / "batch.jsonl"
    path.write_text(_export(run, "--batch", applied.batch))
    plain = run("check-export", str(path))
    assert plain.code == 1 and "no anchor covers any line" in plain.err
    assert run("check-export", str(path), "--no-anchors").code == 0
    both = run("check-export", str(path), "--no-anchors", "--anchors", str(path))
    assert both.code == 2  # they exclude each other


def test_a_forged_anchor_with_a_zeroed_signature_is_refused(anchored, run, tmp_path, settings):
    story, log = anchored
    lines = [json.loads(x) for x in _export(run, "--batch", story.batch).splitlines()]
    rewritten = _rehash(lines, to_status="approved")
    path = _write(tmp_path / "forged.jsonl", rewritten)
    anchor = json.loads(Path(log).read_text().splitlines()[-1])
    anchor.update(event_hash=rewritten[-1]["hash"], signature="0" * 64)
    forged = tmp_path / "forged-anchors.jsonl"
    forged.write_text(json.dumps(anchor) + "\n")

    result = run("check-export", path, "--anchors", str(forged))
    assert result.code == 1 and "signature does not match: forged" in result.err
    # verify rejects the same line.
    verified = run("verify", "--check", "chain", "--anchors", str(forged))
    assert verified.code == 1 and "forged" in verified.out

    # Without the key, anchoring is not claimed at all.
    settings.LEDGER_ANCHOR_KEY = None
    refused = run("check-export", path, "--anchors", str(forged))
    assert refused.code == 3 and "only be checked with the key" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    assert run("verify", "--anchors", str(forged)).code == 3


def test_csv_cells_that_would_start_a_formula_are_neutralised(db, run, tmp_path):
    batch = make_batch(reason='=HYPERLINK("http://example.com/x","click")')
    dangerous = {"=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'quoted"}
    insert_events(batch, [
        {"entity_kind": "visit", "entity_id": 100 + i, "opportunity_id": 1, "xform_id": x,
         "from_status": "approved", "to_status": "over_limit"}
        for i, x in enumerate(sorted(dangerous))
    ])  # fmt: skip
    text = _export(run, "--batch", str(batch.pk), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    for row in rows:
        for name, cell in row.items():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (name, cell)
    assert rows[0]["reason"] == "'" + batch.reason
    assert {r["xform_id"] for r in rows} == {"'" + x for x in dangerous}
    path = tmp_path / "formulas.csv"
    path.write_text(text)
    result = export.check_export(path)
    assert result.ok, result.problem
    assert run("check-export", str(path), "--no-anchors").code == 0


def test_an_unknown_hash_format_is_a_one_line_refusal(applied, run, tmp_path):
    lines = [json.loads(x) for x in _export(run, "--batch", applied.batch).splitlines()]
    lines[2]["hash_format"] = 9
    path = _write(tmp_path / "future.jsonl", lines)
    result = run("check-export", path, "--no-anchors")
    assert result.code == 1, result.err
    (line,) = result.err.strip().splitlines()
    assert "line 3" in line and "unknown hash_format 9" in line


def test_the_documented_standalone_checker_agrees(anchored, run, tmp_path, monkeypatch):
    """docs/auditing.md ships a standard-library checker; it must implement the same rules:
    format 3, quoted CSV cells, signed anchors and their coverage."""
    story, log = anchored
    doc = (Path(__file__).resolve().parents[2] / "docs" / "auditing.md").read_text()
    start = doc.index("# check_export_standalone.py")
    code = doc[start : doc.index("```", start)]
    namespace: dict = {"__name__": "standalone"}
    exec(compile(code, "check_export_standalone.py", "exec"), namespace)  # noqa: S102
    check, anchored_by = namespace["check"], namespace["anchored"]
    anchors = anchored_by(log, TEST_ANCHOR_KEY)

    for fmt in ("jsonl", "csv"):
        text = _export(run, "--batch", story.batch, "--format", fmt)
        path = tmp_path / f"ok.{fmt}"
        path.write_text(text)
        assert check(path) == (None, 0)
        events = len(text.splitlines()) - (fmt == "csv")
        assert check(path, anchors) == (None, events)
        lines = text.splitlines(keepends=True)
        body = lines[1:] if fmt == "csv" else lines
        header = lines[:1] if fmt == "csv" else []
        dropped = tmp_path / f"d.{fmt}"
        dropped.write_text("".join(header + body[:1] + body[2:]))
        assert "record 2" in check(dropped)[0]
        edited = tmp_path / f"e.{fmt}"
        edited.write_text("".join(header + [body[0].replace("over_limit", "rejected", 1)]
                                  + body[1:]))  # fmt: skip
        assert "record 1" in check(edited)[0]

    lines = [json.loads(x) for x in _export(run, "--batch", story.batch).splitlines()]
    shifted = _write(tmp_path / "shifted.jsonl", _rehash(lines, shift=1000, to_status="x"))
    assert check(shifted, anchors) == (None, 0)  # intact in itself, anchored by nothing
    inside = _write(tmp_path / "inside.jsonl", _rehash(lines, gap=True, to_status="x"))
    assert "ids shifted" in check(inside, anchors)[0]
    forged = tmp_path / "forged.jsonl"
    forged.write_text(Path(log).read_text().replace('"signature":"', '"signature":"0'))
    try:
        anchored_by(str(forged), TEST_ANCHOR_KEY)
    except SystemExit as refusal:
        assert "forged" in str(refusal)
    else:
        raise AssertionError("the standalone checker accepted a forged anchor")
