"""Every ``--json`` output validates against the schema ``corrections schema`` publishes, and
the published file ``docs/corrections.schema.json`` is that schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from ledger.cli.schemas import OUTPUTS, document, output_schema

from .conftest import run_limited

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _valid(name: str, value) -> None:
    jsonschema.validate(value, output_schema(name))


def _json(*args: str, code: int = 0):
    """The one JSON object a command prints, having exited with ``code`` (1: findings)."""
    result = run_limited(*args)
    assert result.code == code, result.err
    lines = result.out.splitlines()
    assert len(lines) == 1, result.out[:500]
    return json.loads(lines[0])


def test_the_published_schema_is_current():
    printed = run_limited("schema")
    assert printed.code == 0
    assert json.loads(printed.out) == document()
    assert json.loads((DOCS / "corrections.schema.json").read_text()) == document(), (
        "docs/corrections.schema.json is stale: "
        "./manage.py corrections schema > docs/corrections.schema.json"
    )
    jsonschema.Draft202012Validator.check_schema(document())
    for name in OUTPUTS:
        jsonschema.Draft202012Validator.check_schema(output_schema(name))
        one = run_limited("schema", name)
        assert json.loads(one.out) == output_schema(name)


def test_every_json_output_validates(world, tmp_path, settings):
    seen = set()

    def check(name, value):
        _valid(name, value)
        seen.add(name)

    # plan, scan, approve, apply, undo, recompute, discard
    settings.LEDGER_REQUIRE_APPROVAL = True
    plan = _json("plan", "over-cap", "--opportunity", world.opp_b, "--reason", "r", "--json")
    check("plan", plan)
    check("scan", _json("plan", "over-cap", "--all", "--json"))
    check(
        "approve",
        _json("approve", "--batch", plan["batch"], "--plan-digest", plan["plan_digest"],
              "--operator", "alice", "--json"),
    )  # fmt: skip
    applied = _json("apply", "--batch", plan["batch"], "--json")
    check("run", applied)
    undo = _json("plan", "undo", "--batch", plan["batch"], "--reason", "r", "--json")
    check("plan", undo)
    _json("approve", "--batch", undo["batch"], "--plan-digest", undo["plan_digest"],
          "--operator", "alice", "--json")  # fmt: skip
    undone = _json("apply", "--batch", undo["batch"], "--json")
    check("run", undone)
    assert (undone["action"], undone["reverts"]) == ("undo", plan["batch"])
    check("run", _json("recompute", "--pending", "--json"))
    check("run", _json("recompute", "--batch", plan["batch"], "--json"))
    check("discard", _json("discard", "--batch", world.planned, "--json"))
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{world.visit}\n")
    visits = run_limited(
        "plan", "visits", "--visit-ids", str(ids), "--expand", "--to", "rejected", "--reason",
        "r", "--json",
    )  # fmt: skip
    assert visits.code == 0, visits.err
    check("plan", json.loads(visits.out))

    # reads
    check("batches", _json("batches", "--json"))
    check("show", _json("show", "--batch", plan["batch"], "--json"))
    check("show", _json("show", "--batch", undone["batch"], "--json"))
    check("history", _json("history", "--batch", plan["batch"], "--json"))
    check("history", _json("history", "--opportunity", world.opp, "--json"))
    check(
        "history",
        _json("history", "--batch", plan["batch"], "--as-of", "2030-01-01", "--json"),
    )
    # The world's visit flipped outside the ledger breaks continuity: a finding.
    verified = _json("verify", "--json", code=1)
    check("verify", verified)
    # The world's batches were applied without approval: the witness holds them to the
    # setting in force, so it must be the one they were applied under.
    settings.LEDGER_REQUIRE_APPROVAL = False
    settings.LEDGER_ANCHOR_KEY = "k" * 64
    check("anchor", _json("anchor", "--json"))

    exported = run_limited("export", "--batch", plan["batch"])
    assert exported.code == 0
    for line in exported.out.splitlines():
        check("export-line", json.loads(line))
    path = tmp_path / "export.jsonl"
    path.write_text(exported.out)
    check("check-export", _json("check-export", str(path), "--no-anchors", "--json"))
    path.write_text("\n".join(exported.out.splitlines()[1:]) + "\n")  # a line dropped
    # a later start: valid
    check("check-export", _json("check-export", str(path), "--no-anchors", "--json"))

    # failures
    failed = run_limited("apply", "--batch", plan["batch"], "--json")
    assert failed.code == 4
    check("error", json.loads(failed.out))
    usage = run_limited("apply", "--json")
    assert usage.code == 2
    check("error", json.loads(usage.out))

    assert seen == set(OUTPUTS), set(OUTPUTS) - seen


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_every_output_is_documented(name):
    text = (DOCS / "json-schema.md").read_text()
    assert f"`{name}`" in text, f"docs/json-schema.md does not describe the {name} output"
