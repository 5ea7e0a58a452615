"""Bad input: one clear line on stderr, the exit code of its kind, nothing written.

The full table of bad inputs is ``tests/cli/test_bad_input_table.py``."""

import uuid

import pytest

from .conftest import ledger_counts


@pytest.fixture
def batch(incident, run) -> str:
    opp = str(incident.opportunity_a.opportunity_id)
    return run("plan", "over-cap", "--opportunity", opp, "--reason", "x", "--json").json["batch"]


def _refused(run, *args, says: str, code: int = 3) -> None:
    counts = ledger_counts()
    result = run(*args)
    assert result.code == code, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("corrections: ")
    assert says in lines[0]
    assert ledger_counts() == counts


def test_unknown_batch(batch, run):
    missing = str(uuid.uuid4())
    _refused(run, "apply", "--batch", missing, says=f"unknown batch {missing}")
    _refused(run, "undo", "--batch", missing, "--reason", "x", says="unknown batch")
    _refused(run, "recompute", "--batch", missing, says="unknown batch")
    _refused(run, "apply", "--batch", "not-a-uuid", says="is not a batch id")


def test_empty_reason(incident, batch, run):
    opp = str(incident.opportunity_a.opportunity_id)
    _refused(run, "plan", "over-cap", "--opportunity", opp, says="a reason is required")
    _refused(run, "plan", "over-cap", "--opportunity", opp, "--reason", "  ", says="reason")
    run("apply", "--batch", batch)
    _refused(run, "undo", "--batch", batch, "--reason", "", says="a reason is required")


def test_unknown_and_malformed_opportunities(incident, run):
    missing = str(uuid.uuid4())
    _refused(
        run, "plan", "over-cap", "--opportunity", missing, "--reason", "x",
        says=f"unknown opportunity: {missing}",
    )  # fmt: skip
    _refused(
        run, "plan", "over-cap", "--opportunity", "nope", "--reason", "x",
        says="'nope' is not an opportunity UUID",
    )  # fmt: skip


def test_unreadable_and_malformed_files(incident, run, tmp_path):
    opp = str(incident.opportunity_a.opportunity_id)
    absent = tmp_path / "absent.txt"
    _refused(
        run, "plan", "visits", "--xform-ids", str(absent), "--reason", "x",
        says=f"cannot read xform id file {absent}",
    )  # fmt: skip
    bad = tmp_path / "bad.txt"
    bad.write_text("12\nabc\n")
    _refused(
        run, "plan", "over-cap", "--opportunity", opp, "--reason", "x", "--exclude", str(bad),
        says="entries that are not ids: 'abc'",
    )  # fmt: skip
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("999999999\n")
    _refused(
        run, "plan", "over-cap", "--opportunity", opp, "--reason", "x", "--exclude",
        str(unknown), says="unknown completed work ids in the exclusion list: 999999999",
    )  # fmt: skip
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    _refused(run, "plan", "visits", "--xform-ids", str(empty), "--reason", "x", says="no ids")


def test_unsupported_target_status(incident, run, tmp_path):
    listing = tmp_path / "x.txt"
    listing.write_text("whatever\n")
    _refused(
        run, "plan", "visits", "--xform-ids", str(listing), "--to", "trial", "--reason", "x",
        says="invalid choice: 'trial'", code=2,
    )  # fmt: skip


def test_wrong_state(batch, run):
    _refused(run, "undo", "--batch", batch, "--reason", "x", says="only an applied batch", code=4)
    assert run("discard", "--batch", batch).code == 0
    _refused(run, "apply", "--batch", batch, says="is discarded", code=4)
    _refused(run, "discard", "--batch", batch, says="only a planned batch", code=4)
