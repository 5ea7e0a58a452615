"""Every bad input answered: one line, its documented exit code, no traceback, no hang, and
nothing written.

Each case runs the command in-process under a time limit. Before and after, a fingerprint of
the database (row counts of every ledger table, digests of batch states and of every host
status and accrual) must be equal. Refusals print exactly one line on stderr starting with
``corrections:``; with ``--json`` they print exactly one JSON error object on stdout, which
validates against the published schema. A conflict is the one refusal that lists details
under its line (one line per entity).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import jsonschema
import pytest

from ledger.cli.schemas import output_schema
from ledger.errors import ExitCode

from .conftest import fingerprint, run_limited

USAGE = ExitCode.USAGE
BAD = ExitCode.BAD_INPUT
STATE = ExitCode.WRONG_STATE
CONFLICT = ExitCode.CONFLICT
NOT_ALLOWED = ExitCode.NOT_ALLOWED
FINDINGS = ExitCode.FINDINGS

LONG = "y" * 100_000
UUID0 = "6f1c1f8e-0000-4000-8000-000000000000"


@dataclass
class Case:
    name: str
    args: tuple[str, ...]
    code: int
    says: str
    stdin: bytes | None = None
    details: bool = False  # a conflict lists one line per entity under its headline
    tags: set = field(default_factory=set)


def case(name, *args, code, says, stdin=None, details=False) -> Case:
    return Case(name, args, code, says, stdin, details)


def _intact_line() -> bytes:
    """One event line whose hash holds (the ledger's first event, format 3)."""
    from ledger import chain

    line = {"id": 1, "batch_id": "6f1f3a0e-0000-4000-8000-000000000001", "entity_kind": "visit",
            "entity_id": 1, "opportunity_id": 1, "from_status": "approved",
            "to_status": "over_limit", "reason": "r", "recorded_at": "2026-01-01T00:00:00Z",
            "hash_format": 3, "prev_hash": chain.GENESIS}  # fmt: skip
    line["hash"] = chain.event_hash(chain.GENESIS, line)
    return (json.dumps(line) + "\n").encode()


FILES: dict[str, bytes | None] = {
    "binary": b"\x00\x01\x02\x03 binary",
    "nul.txt": b"12\n\x0034\n",
    "latin1.txt": "12\n\xe9t\xe9\n".encode("latin-1"),
    "superscript.txt": "²\n".encode(),
    "arabic.txt": "١٢٣\n".encode(),
    "fullwidth.txt": "１２\n".encode(),
    "huge.txt": b"9" * 100_000 + b"\n",
    "overflow.txt": b"9223372036854775808\n",
    "negative.txt": b"-5\n",
    "float.txt": b"1.5\n",
    "hex.txt": b"0x10\n",
    "underscore.txt": b"1_000\n",
    "words.txt": b"twelve\n",
    "empty.txt": b"",
    "comments.txt": b"# nothing here\n\n   \n",
    "unknown.txt": b"999999999\n",
    "long-xform.txt": b"x" * 51 + b"\n",
    "escape-xform.txt": b"\x1b[31mred\n",
    "nope-xform.txt": b"no-such-xform\n",
    "garbage.jsonl": b"{not json\n",
    "empty.jsonl": b"",
    "blank.jsonl": b"\n\n   \n",
    "array.jsonl": b"[1, 2]\n",
    "nohash.jsonl": b'{"id": 1}\n',
    "badcsv.csv": b"a,b,c\n1,2,3\n",
    "anchors-garbage.jsonl": b"not an anchor\n",
    "anchors-empty.jsonl": b"",
    "anchors-one.jsonl": (
        b'{"anchor":2,"at":"2026-01-01T00:00:00Z","event_id":1,"event_hash":"'
        + b"0" * 64
        + b'","events":1,"entry_id":null,"entry_hash":"'
        + b"0" * 64
        + b'","entries":0,"key_id":"0123456789abcdef","signature":"'
        + b"0" * 64
        + b'"}\n'
    ),
    "intact.jsonl": _intact_line(),
    "future.jsonl": b'{"id": 1, "prev_hash": "'
    + b"0" * 64
    + b'", "hash": "'
    + b"0" * 64
    + b'", "hash_format": 9}\n',
}


def _cases(w, tmp) -> list[Case]:
    opp, planned, applied = w.opp, w.planned, w.applied
    f = {name: str(tmp / name) for name in (*FILES, "partial.txt")}
    fifo, folder, link = str(tmp / "fifo"), str(tmp / "folder"), str(tmp / "link-to-fifo")
    absent = str(tmp / "absent.txt")
    plan = ("plan", "over-cap", "--opportunity", opp, "--reason", "r")
    visits = ("plan", "visits", "--reason", "r")
    return [
        # ---- usage: the command line does not parse (exit 2) ----
        case("no subcommand", code=USAGE, says="required"),
        case("unknown subcommand", "frobnicate", code=USAGE, says="invalid choice"),
        case("plan without planner", "plan", code=USAGE, says="required"),
        case("unknown planner", "plan", "under-cap", code=USAGE, says="invalid choice"),
        case("unknown option", "batches", "--colour", code=USAGE, says="unrecognized"),
        case("apply without --batch", "apply", code=USAGE, says="--batch"),
        case("--batch without value", "apply", "--batch", code=USAGE, says="expected one"),
        case("undo without --reason", "undo", "--batch", applied, code=USAGE, says="--reason"),
        case(
            "visits without --reason",
            "plan",
            "visits",
            "--visit-ids",
            f["unknown.txt"],
            code=USAGE,
            says="--reason",
        ),
        case("visits without a list", *visits, code=USAGE, says="--xform-ids"),
        case(
            "both lists",
            *visits,
            "--xform-ids",
            f["empty.txt"],
            "--visit-ids",
            f["empty.txt"],
            code=USAGE,
            says="not allowed with",
        ),
        case(
            "over-cap without scope",
            "plan",
            "over-cap",
            "--reason",
            "r",
            code=USAGE,
            says="--opportunity",
        ),
        case(
            "--all with --opportunity",
            "plan",
            "over-cap",
            "--all",
            "--opportunity",
            opp,
            code=USAGE,
            says="not allowed with",
        ),
        case(
            "--to not a status",
            *visits,
            "--visit-ids",
            f["unknown.txt"],
            "--to",
            "trial",
            code=USAGE,
            says="invalid choice: 'trial'",
        ),
        case(
            "--to empty",
            *visits,
            "--visit-ids",
            f["unknown.txt"],
            "--to",
            "",
            code=USAGE,
            says="invalid choice",
        ),
        case("--state unknown", "batches", "--state", "done", code=USAGE, says="invalid choice"),
        case(
            "--format unknown",
            "export",
            "--batch",
            applied,
            "--format",
            "xml",
            code=USAGE,
            says="invalid choice",
        ),
        case("check-export without file", "check-export", code=USAGE, says="FILE"),
        case(
            "two selectors",
            "history",
            "--visit",
            "1",
            "--batch",
            applied,
            code=USAGE,
            says="not allowed with",
        ),
        case("history without selector", "history", code=USAGE, says="required"),
        case("--check unknown", "verify", "--check", "vibes", code=USAGE, says="invalid choice"),
        case("-v out of range", "batches", "-v", "9", code=USAGE, says="invalid choice"),
        case("-v not a number", "batches", "-v", "loud", code=USAGE, says="invalid"),
        case("schema of nothing", "schema", "nothing", code=USAGE, says="invalid choice"),
        case("recompute without target", "recompute", code=USAGE, says="required"),
        case("privileges without role", "privileges", code=USAGE, says="--app-role"),
        case(
            "privileges for two roles",
            "privileges",
            "--app-role",
            "app",
            "--witness-role",
            "witness",
            code=USAGE,
            says="not allowed with",
        ),
        case(
            "check-export: anchors and no anchors",
            "check-export",
            f["garbage.jsonl"],
            "--anchors",
            f["anchors-one.jsonl"],
            "--no-anchors",
            code=USAGE,
            says="not allowed with",
        ),
        case(
            "approve without digest",
            "approve",
            "--batch",
            planned,
            code=USAGE,
            says="--plan-digest",
        ),
        case("usage error as JSON", "apply", "--json", code=USAGE, says="--batch"),
        # ---- bad input: batch ids (exit 3) ----
        case(
            "batch not a uuid", "apply", "--batch", "not-a-uuid", code=BAD, says="is not a batch id"
        ),
        case("batch empty", "apply", "--batch", "", code=BAD, says="is not a batch id"),
        case("batch too short", "show", "--batch", applied[:7], code=BAD, says="is not a batch id"),
        case(
            "batch prefix unknown",
            "show",
            "--batch",
            "ffffffff",
            code=BAD,
            says="no batch id starts with ffffffff",
        ),
        case("batch unknown", "apply", "--batch", UUID0, code=BAD, says=f"unknown batch {UUID0}"),
        case(
            "batch unknown (undo)",
            "undo",
            "--batch",
            UUID0,
            "--reason",
            "r",
            code=BAD,
            says="unknown batch",
        ),
        case(
            "batch unknown (discard)", "discard", "--batch", UUID0, code=BAD, says="unknown batch"
        ),
        case(
            "batch unknown (recompute)",
            "recompute",
            "--batch",
            UUID0,
            code=BAD,
            says="unknown batch",
        ),
        case("batch unknown (show)", "show", "--batch", UUID0, code=BAD, says="no batch"),
        case("batch unknown (history)", "history", "--batch", UUID0, code=BAD, says="no batch"),
        case("batch unknown (export)", "export", "--batch", UUID0, code=BAD, says="no batch"),
        case(
            "batch unknown (approve)",
            "approve",
            "--batch",
            UUID0,
            "--plan-digest",
            "a" * 12,
            code=BAD,
            says="unknown batch",
        ),
        case("batch huge", "show", "--batch", LONG, code=BAD, says="is not a batch id"),
        case("batch with NUL", "show", "--batch", "abc\x00def", code=BAD, says="is not a batch id"),
        case(
            "batch unknown as JSON",
            "apply",
            "--batch",
            UUID0,
            "--json",
            code=BAD,
            says="unknown batch",
        ),
        # ---- bad input: reasons, tickets, operators ----
        case(
            "over-cap without reason",
            "plan",
            "over-cap",
            "--opportunity",
            opp,
            code=BAD,
            says="a reason is required",
        ),
        case(
            "blank reason",
            "plan",
            "over-cap",
            "--opportunity",
            opp,
            "--reason",
            "   ",
            code=BAD,
            says="a reason is required",
        ),
        case(
            "empty undo reason",
            "undo",
            "--batch",
            applied,
            "--reason",
            "",
            code=BAD,
            says="a reason is required",
        ),
        case(
            "reason too long",
            "plan",
            "over-cap",
            "--opportunity",
            opp,
            "--reason",
            LONG,
            code=BAD,
            says="--reason is longer than 2000 characters",
        ),
        case(
            "reason with escape",
            "plan",
            "over-cap",
            "--opportunity",
            opp,
            "--reason",
            "a\x1b[2Jb",
            code=BAD,
            says="--reason contains a control character (U+001B)",
        ),
        case(
            "reason with newline",
            *visits[:2],
            "--visit-ids",
            f["unknown.txt"],
            "--reason",
            "a\nb",
            code=BAD,
            says="control character (U+000A)",
        ),
        case(
            "reason not UTF-8",
            "plan",
            "over-cap",
            "--opportunity",
            opp,
            "--reason",
            "caf\udce9",
            code=BAD,
            says="--reason is not valid UTF-8",
        ),
        case(
            "reason with NUL",
            "undo",
            "--batch",
            applied,
            "--reason",
            "a\x00b",
            code=BAD,
            says="control character (U+0000)",
        ),
        case(
            "ticket too long",
            *plan,
            "--ticket",
            "T" * 201,
            code=BAD,
            says="--ticket is longer than 200 characters",
        ),
        case("ticket huge", *plan, "--ticket", LONG, code=BAD, says="--ticket is longer"),
        case("ticket blank", *plan, "--ticket", " ", code=BAD, says="--ticket is empty"),
        case("ticket with tab", *plan, "--ticket", "a\tb", code=BAD, says="control character"),
        case(
            "operator too long",
            *plan,
            "--operator",
            "o" * 151,
            code=BAD,
            says="--operator is longer than 150 characters",
        ),
        case(
            "operator huge",
            "apply",
            "--batch",
            planned,
            "--operator",
            LONG,
            code=BAD,
            says="--operator is longer",
        ),
        case(
            "operator empty",
            "apply",
            "--batch",
            planned,
            "--operator",
            "",
            code=BAD,
            says="--operator is empty",
        ),
        case(
            "operator with newline",
            "discard",
            "--batch",
            planned,
            "--operator",
            "a\nb",
            code=BAD,
            says="control character",
        ),
        case(
            "operator not UTF-8",
            "discard",
            "--batch",
            planned,
            "--operator",
            "\udcff",
            code=BAD,
            says="not valid UTF-8",
        ),
        # ---- bad input: opportunities ----
        case(
            "opportunity not a uuid",
            "plan",
            "over-cap",
            "--opportunity",
            "nope",
            "--reason",
            "r",
            code=BAD,
            says="'nope' is not an opportunity UUID",
        ),
        case(
            "opportunity empty",
            "plan",
            "over-cap",
            "--opportunity",
            "",
            "--reason",
            "r",
            code=BAD,
            says="is not an opportunity UUID",
        ),
        case(
            "opportunity huge",
            "plan",
            "over-cap",
            "--opportunity",
            LONG,
            "--reason",
            "r",
            code=BAD,
            says="is not an opportunity UUID",
        ),
        case(
            "opportunity unknown",
            "plan",
            "over-cap",
            "--opportunity",
            UUID0,
            "--reason",
            "r",
            code=BAD,
            says=f"unknown opportunity: {UUID0}",
        ),
        case(
            "one opportunity of two unknown",
            "plan",
            "over-cap",
            "--opportunity",
            opp,
            "--opportunity",
            UUID0,
            "--reason",
            "r",
            code=BAD,
            says="unknown opportunity",
        ),
        case(
            "--all with --reason",
            "plan",
            "over-cap",
            "--all",
            "--reason",
            "r",
            code=BAD,
            says="--all only reports",
        ),
        case(
            "--all with --include-paid",
            "plan",
            "over-cap",
            "--all",
            "--include-paid",
            code=BAD,
            says="drop --include-paid",
        ),
        case(
            "history opportunity bad",
            "history",
            "--opportunity",
            "x1",
            code=BAD,
            says="is not an opportunity: expected its UUID",
        ),
        case(
            "history opportunity unknown",
            "history",
            "--opportunity",
            UUID0,
            code=BAD,
            says="no opportunity",
        ),
        # ---- bad input: entity ids in options ----
        case(
            "visit not a number", "history", "--visit", "abc", code=BAD, says="'abc' is not an id"
        ),
        case("visit superscript", "history", "--visit", "²", code=BAD, says="is not an id"),
        case("visit arabic digits", "history", "--visit", "١٢٣", code=BAD, says="is not an id"),
        case("visit underscore", "history", "--visit", "1_000", code=BAD, says="is not an id"),
        case("visit negative", "history", "--visit", "-1", code=BAD, says="is not an id"),
        case("visit zero", "history", "--visit", "0", code=BAD, says="ids start at 1"),
        case("visit huge", "history", "--visit", "9" * 100_000, code=BAD, says="is out of range"),
        case(
            "visit over bigint",
            "history",
            "--visit",
            "9223372036854775808",
            code=BAD,
            says="is out of range",
        ),
        case(
            "visit unknown", "history", "--visit", "999999999", code=BAD, says="no visit 999999999"
        ),
        case(
            "work not a number", "history", "--completed-work", "w1", code=BAD, says="is not an id"
        ),
        case("access float", "history", "--access", "1.5", code=BAD, says="is not an id"),
        case("access unknown", "history", "--access", "999999999", code=BAD, says="no access"),
        case("xform empty", "history", "--xform-id", "", code=BAD, says="--xform-id is empty"),
        case(
            "xform too long",
            "history",
            "--xform-id",
            "x" * 51,
            code=BAD,
            says="--xform-id is longer than 50",
        ),
        case(
            "xform unknown",
            "history",
            "--xform-id",
            "nope",
            code=BAD,
            says="no visit with xform id",
        ),
        # ---- bad input: numbers, digests, hashes, roles ----
        case(
            "limit zero",
            "batches",
            "--limit",
            "0",
            code=BAD,
            says="--limit takes a number from 1 to 100000, not 0",
        ),
        case("limit negative", "batches", "--limit", "-3", code=BAD, says="--limit takes"),
        case(
            "limit huge",
            "batches",
            "--limit",
            "99999999999999999999",
            code=BAD,
            says="--limit takes",
        ),
        case("limit words", "batches", "--limit", "many", code=BAD, says="is not a whole number"),
        case("limit empty", "batches", "--limit", "", code=BAD, says="is not a whole number"),
        case("limit as JSON", "batches", "--limit", "0", "--json", code=BAD, says="--limit takes"),
        case("sample negative", "verify", "--sample", "-1", code=BAD, says="--sample takes"),
        case("sample huge", "verify", "--sample", "1" * 40, code=BAD, says="--sample takes"),
        case(
            "digest too short",
            "approve",
            "--batch",
            planned,
            "--plan-digest",
            "abc",
            "--operator",
            "alice",
            code=BAD,
            says="is not a digest",
        ),
        case(
            "digest not hex",
            "approve",
            "--batch",
            planned,
            "--plan-digest",
            "z" * 12,
            "--operator",
            "alice",
            code=BAD,
            says="is not a digest",
        ),
        case(
            "digest huge",
            "approve",
            "--batch",
            planned,
            "--plan-digest",
            "a" * 100_000,
            "--operator",
            "alice",
            code=BAD,
            says="is not a digest",
        ),
        case(
            "first-prev short",
            "check-export",
            f["garbage.jsonl"],
            "--first-prev",
            "ab",
            code=BAD,
            says="is not a 64-character hex hash",
        ),
        case(
            "last-hash not hex",
            "check-export",
            f["garbage.jsonl"],
            "--last-hash",
            "g" * 64,
            code=BAD,
            says="is not a 64-character hex hash",
        ),
        case(
            "role not a name",
            "privileges",
            "--app-role",
            "app; DROP",
            code=BAD,
            says="not a role name",
        ),
        case(
            "witness role not a name",
            "privileges",
            "--witness-role",
            "w; DROP",
            code=BAD,
            says="not a role name",
        ),
        case(
            "role huge",
            "privileges",
            "--app-role",
            LONG,
            code=BAD,
            says="longer than 63 characters",
        ),
        # ---- bad input: times ----
        case(
            "as-of empty",
            "history",
            "--batch",
            applied,
            "--as-of",
            "",
            code=BAD,
            says="--as-of is empty",
        ),
        case(
            "as-of blank",
            "history",
            "--batch",
            applied,
            "--as-of",
            "  ",
            code=BAD,
            says="--as-of is empty",
        ),
        case(
            "as-of words",
            "history",
            "--batch",
            applied,
            "--as-of",
            "yesterday",
            code=BAD,
            says="is not an ISO-8601 time",
        ),
        case(
            "as-of month 13",
            "history",
            "--batch",
            applied,
            "--as-of",
            "2026-13-45",
            code=BAD,
            says="is not an ISO-8601 time",
        ),
        case(
            "as-of huge",
            "history",
            "--batch",
            applied,
            "--as-of",
            LONG,
            code=BAD,
            says="is not an ISO-8601 time",
        ),
        case(
            "as-of arabic digits",
            "history",
            "--batch",
            applied,
            "--as-of",
            "٢٠٢٦-٠١-٠١",
            code=BAD,
            says="is not an ISO-8601 time",
        ),
        case(
            "since words",
            "export",
            "--since",
            "last week",
            code=BAD,
            says="--since: 'last week' is not an ISO-8601 time",
        ),
        case("since empty", "export", "--since", "", code=BAD, says="--since is empty"),
        case(
            "until before since",
            "export",
            "--since",
            "2026-05-02",
            "--until",
            "2026-05-01",
            code=BAD,
            says="--until must be after --since",
        ),
        case(
            "until with batch",
            "export",
            "--batch",
            applied,
            "--until",
            "2026-05-01",
            code=BAD,
            says="--until goes with --since",
        ),
        # ---- bad input: id files ----
        *[
            case(f"visit ids: {name}", *visits, "--visit-ids", f[name], code=BAD, says=says)
            for name, says in (
                ("binary", "is binary, not text"),
                ("nul.txt", "is binary, not text"),
                ("latin1.txt", "is not UTF-8 text"),
                ("superscript.txt", "entries that are not ids: '²'"),
                ("arabic.txt", "entries that are not ids: '١٢٣'"),
                ("fullwidth.txt", "entries that are not ids"),
                ("huge.txt", "has an id out of range"),
                ("overflow.txt", "has an id out of range"),
                ("negative.txt", "entries that are not ids: '-5'"),
                ("float.txt", "entries that are not ids"),
                ("hex.txt", "entries that are not ids"),
                ("underscore.txt", "entries that are not ids"),
                ("words.txt", "entries that are not ids"),
                ("empty.txt", "lists no ids"),
                ("comments.txt", "lists no ids"),
                ("unknown.txt", "unknown visit ids: 999999999"),
            )
        ],
        case(
            "visit ids: FIFO", *visits, "--visit-ids", fifo, code=BAD, says="is not a regular file"
        ),
        case(
            "visit ids: link to FIFO",
            *visits,
            "--visit-ids",
            link,
            code=BAD,
            says="is not a regular file",
        ),
        case(
            "visit ids: directory",
            *visits,
            "--visit-ids",
            folder,
            code=BAD,
            says="is not a regular file",
        ),
        case(
            "visit ids: device",
            *visits,
            "--visit-ids",
            "/dev/null",
            code=BAD,
            says="is not a regular file",
        ),
        case(
            "visit ids: missing",
            *visits,
            "--visit-ids",
            absent,
            code=BAD,
            says="cannot read visit id file",
        ),
        case("visit ids: empty name", *visits, "--visit-ids", "", code=BAD, says="empty file name"),
        case(
            "visit ids: name with NUL",
            *visits,
            "--visit-ids",
            "a\x00b",
            code=BAD,
            says="cannot hold a NUL",
        ),
        case(
            "visit ids: stdin binary",
            *visits,
            "--visit-ids",
            "-",
            stdin=b"\x00\xff",
            code=BAD,
            says="is binary",
        ),
        case(
            "visit ids: stdin superscript",
            *visits,
            "--visit-ids",
            "-",
            stdin="²\n".encode(),
            code=BAD,
            says="entries that are not ids",
        ),
        case(
            "visit ids: stdin empty",
            *visits,
            "--visit-ids",
            "-",
            stdin=b"",
            code=BAD,
            says="lists no ids",
        ),
        case("xform ids: binary", *visits, "--xform-ids", f["binary"], code=BAD, says="is binary"),
        case(
            "xform ids: latin1",
            *visits,
            "--xform-ids",
            f["latin1.txt"],
            code=BAD,
            says="is not UTF-8 text",
        ),
        case(
            "xform ids: too long",
            *visits,
            "--xform-ids",
            f["long-xform.txt"],
            code=BAD,
            says="longer than 50 characters",
        ),
        case(
            "xform ids: unknown",
            *visits,
            "--xform-ids",
            f["nope-xform.txt"],
            code=BAD,
            says="unknown xform ids: no-such-xform",
        ),
        case(
            "xform ids: escape sequence",
            *visits,
            "--xform-ids",
            f["escape-xform.txt"],
            code=BAD,
            says="unknown xform ids: \\x1b[31mred",
        ),
        case(
            "xform ids: FIFO", *visits, "--xform-ids", fifo, code=BAD, says="is not a regular file"
        ),
        case(
            "xform ids: partial work",
            *visits,
            "--xform-ids",
            f["partial.txt"],
            code=BAD,
            says="lacks",
        ),
        case(
            "exclusions: binary", *plan, "--exclude", f["binary"], code=BAD, says="exclusion file"
        ),
        case(
            "exclusions: latin1",
            *plan,
            "--exclude",
            f["latin1.txt"],
            code=BAD,
            says="is not UTF-8 text",
        ),
        case(
            "exclusions: superscript",
            *plan,
            "--exclude",
            f["superscript.txt"],
            code=BAD,
            says="entries that are not ids",
        ),
        case(
            "exclusions: huge id", *plan, "--exclude", f["huge.txt"], code=BAD, says="out of range"
        ),
        case(
            "exclusions: unknown",
            *plan,
            "--exclude",
            f["unknown.txt"],
            code=BAD,
            says="unknown completed work ids in the exclusion list: 999999999",
        ),
        case("exclusions: FIFO", *plan, "--exclude", fifo, code=BAD, says="is not a regular file"),
        case(
            "exclusions: directory",
            *plan,
            "--exclude",
            folder,
            code=BAD,
            says="is not a regular file",
        ),
        case(
            "exclusions: missing",
            *plan,
            "--exclude",
            absent,
            code=BAD,
            says="cannot read exclusion file",
        ),
        case(
            "exclusions: stdin arabic",
            *plan,
            "--exclude",
            "-",
            stdin="١٢٣".encode(),
            code=BAD,
            says="entries that are not ids",
        ),
        # ---- bad input: exports and anchors ----
        case(
            "check-export: binary",
            "check-export",
            f["binary"],
            code=BAD,
            says="is binary, not an export",
        ),
        case(
            "check-export: latin1",
            "check-export",
            f["latin1.txt"],
            code=BAD,
            says="is not UTF-8 text",
        ),
        case("check-export: FIFO", "check-export", fifo, code=BAD, says="is not a regular file"),
        case(
            "check-export: directory",
            "check-export",
            folder,
            code=BAD,
            says="is not a regular file",
        ),
        case(
            "check-export: device",
            "check-export",
            "/dev/zero",
            code=BAD,
            says="is not a regular file",
        ),
        case("check-export: missing", "check-export", absent, code=BAD, says="cannot read"),
        case("check-export: empty name", "check-export", "", code=BAD, says="empty file name"),
        case(
            "check-export: anchors FIFO",
            "check-export",
            f["garbage.jsonl"],
            "--anchors",
            fifo,
            code=BAD,
            says="is not a regular file",
        ),
        case(
            "check-export: anchors garbage",
            "check-export",
            f["garbage.jsonl"],
            "--anchors",
            f["anchors-garbage.jsonl"],
            code=BAD,
            says="not an anchor",
        ),
        case(
            "check-export: anchors empty",
            "check-export",
            f["garbage.jsonl"],
            "--anchors",
            f["anchors-empty.jsonl"],
            code=BAD,
            says="holds no anchors",
        ),
        case(
            "verify: anchors FIFO",
            "verify",
            "--anchors",
            fifo,
            code=BAD,
            says="is not a regular file",
        ),
        case(
            "verify: anchors binary", "verify", "--anchors", f["binary"], code=BAD, says="is binary"
        ),
        case("verify: anchors stdin", "verify", "--anchors", "-", code=BAD, says="takes a file"),
        case(
            "check-export: anchors without the key",
            "check-export",
            f["garbage.jsonl"],
            "--anchors",
            f["anchors-one.jsonl"],
            code=BAD,
            says="only be checked with the key",
        ),
        case(
            "verify: anchors without the key",
            "verify",
            "--anchors",
            f["anchors-one.jsonl"],
            code=BAD,
            says="only be checked with the key",
        ),
        # ---- findings: the check ran and the file proves nothing, or is bad (exit 1) ----
        case(
            "check-export: empty file",
            "check-export",
            f["empty.jsonl"],
            code=FINDINGS,
            says="holds no events",
        ),
        case(
            "check-export: blank lines",
            "check-export",
            f["blank.jsonl"],
            code=FINDINGS,
            says="holds no events",
        ),
        case(
            "check-export: not JSON",
            "check-export",
            f["garbage.jsonl"],
            code=FINDINGS,
            says="line 1: not valid JSON",
        ),
        case(
            "check-export: JSON array",
            "check-export",
            f["array.jsonl"],
            code=FINDINGS,
            says="CSV header lacks",
        ),
        case(
            "check-export: no hashes",
            "check-export",
            f["nohash.jsonl"],
            code=FINDINGS,
            says="prev_hash or hash missing",
        ),
        case(
            "check-export: unknown hash format",
            "check-export",
            f["future.jsonl"],
            "--no-anchors",
            code=FINDINGS,
            says="unknown hash_format 9",
        ),
        case(
            "check-export: not anchored",
            "check-export",
            f["intact.jsonl"],
            code=FINDINGS,
            says="no anchor covers any line",
        ),
        case(
            "check-export: wrong CSV",
            "check-export",
            f["badcsv.csv"],
            code=FINDINGS,
            says="CSV header lacks",
        ),
        # ---- wrong state (exit 4) ----
        case(
            "apply an applied batch",
            "apply",
            "--batch",
            applied,
            code=STATE,
            says="only a planned batch can be applied",
        ),
        case(
            "apply a discarded batch",
            "apply",
            "--batch",
            w.discarded,
            code=STATE,
            says="is discarded",
        ),
        case("apply an undone batch", "apply", "--batch", w.undone, code=STATE, says="is undone"),
        case(
            "apply an undo batch",
            "apply",
            "--batch",
            w.undo,
            code=STATE,
            says="only a planned batch",
        ),
        case(
            "undo a planned batch",
            "undo",
            "--batch",
            planned,
            "--reason",
            "r",
            code=STATE,
            says="only an applied batch can be undone",
        ),
        case(
            "undo an undone batch",
            "undo",
            "--batch",
            w.undone,
            "--reason",
            "r",
            code=STATE,
            says="only an applied batch",
        ),
        case(
            "undo an undo batch",
            "undo",
            "--batch",
            w.undo,
            "--reason",
            "r",
            code=STATE,
            says="is itself an undo",
        ),
        case(
            "discard an applied batch",
            "discard",
            "--batch",
            applied,
            code=STATE,
            says="only a planned batch can be discarded",
        ),
        case(
            "discard twice",
            "discard",
            "--batch",
            w.discarded,
            code=STATE,
            says="only a planned batch",
        ),
        case(
            "approve an applied batch",
            "approve",
            "--batch",
            applied,
            "--plan-digest",
            "a" * 12,
            "--operator",
            "alice",
            code=STATE,
            says="only a planned batch",
        ),
        case(
            "approve another digest",
            "approve",
            "--batch",
            planned,
            "--plan-digest",
            "0" * 12,
            "--operator",
            "alice",
            code=STATE,
            says="review the priced plan",
        ),
        case(
            "wrong state as JSON",
            "apply",
            "--batch",
            applied,
            "--json",
            code=STATE,
            says="only a planned batch",
        ),
        # ---- conflict (exit 5) ----
        case(
            "apply a batch whose visit moved",
            "apply",
            "--batch",
            w.conflicted,
            code=CONFLICT,
            says="no longer as the batch expects",
            details=True,
        ),
        case(
            "conflict as JSON",
            "apply",
            "--batch",
            w.conflicted,
            "--json",
            code=CONFLICT,
            says="no longer as the batch expects",
            details=True,
        ),
        # ---- not allowed (exit 7) ----
        case(
            "operator unknown",
            "apply",
            "--batch",
            planned,
            "--operator",
            "ghost",
            code=NOT_ALLOWED,
            says="'ghost' is not a user",
        ),
        case(
            "operator inactive",
            "discard",
            "--batch",
            planned,
            "--operator",
            "inactive",
            code=NOT_ALLOWED,
            says="is not an active user",
        ),
        case(
            "operator lacks permission",
            *plan,
            "--operator",
            "nobody",
            code=NOT_ALLOWED,
            says="lacks the permission ledger.plan_correction",
        ),
        case(
            "planner approves own plan",
            "approve",
            "--batch",
            planned,
            "--plan-digest",
            w.planned_digest[:12],
            "--operator",
            "ledger-test",
            code=NOT_ALLOWED,
            says="someone else must approve it",
        ),
        case(
            "not allowed as JSON",
            "apply",
            "--batch",
            planned,
            "--operator",
            "ghost",
            "--json",
            code=NOT_ALLOWED,
            says="is not a user",
        ),
    ]


@pytest.fixture
def files(tmp_path, world):
    from commcare_connect.opportunity.models import UserVisit

    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "fifo", tmp_path / "link-to-fifo")
    (tmp_path / "folder").mkdir()
    # One visit of a completed work that has two: a partial list.
    work = (
        UserVisit.objects.exclude(status="trial")
        .values("completed_work_id")
        .order_by("completed_work_id")
    )
    for row in work:
        xforms = list(
            UserVisit.objects.filter(completed_work_id=row["completed_work_id"])
            .exclude(status="trial")
            .values_list("xform_id", flat=True)
        )
        if len(xforms) > 1:
            (tmp_path / "partial.txt").write_text(xforms[0] + "\n")
            break
    return tmp_path


def _check(c: Case) -> list[str]:
    """What is wrong with one case's answer (empty when it is right)."""
    before = fingerprint()
    result = run_limited(*c.args, stdin=c.stdin)
    after = fingerprint()
    problems = []
    if result.code != c.code:
        problems.append(f"exit {result.code}, expected {c.code}")
    if after != before:
        problems.append("something was written")
    if "Traceback" in result.err or "Traceback" in result.out:
        problems.append("a traceback")
    lines = result.err.splitlines()
    if not lines or not lines[0].startswith("corrections: "):
        problems.append(f"stderr does not start with 'corrections: ': {result.err[:200]!r}")
    elif c.says not in lines[0]:
        problems.append(f"stderr line {lines[0][:300]!r} does not say {c.says!r}")
    if len(lines) != 1 and not c.details:
        problems.append(f"{len(lines)} stderr lines: {result.err[:300]!r}")
    if max((len(line) for line in lines), default=0) > 1100:
        problems.append("a stderr line longer than 1100 characters")
    if "--json" in c.args:
        out = result.out.splitlines()
        if len(out) != 1:
            problems.append(f"{len(out)} stdout lines with --json")
        else:
            report = json.loads(out[0])
            try:
                jsonschema.validate(report, output_schema("error"))
            except jsonschema.ValidationError as error:
                problems.append(f"error object invalid: {error.message}")
            if report.get("exit_code") != c.code:
                problems.append(f"error object says exit {report.get('exit_code')}")
            if c.says not in report.get("message", ""):
                problems.append("error object's message differs")
            if c.code == CONFLICT and not report.get("conflicts"):
                problems.append("conflict JSON lists no conflicts")
    elif c.code != FINDINGS and result.out:
        problems.append(f"stdout not empty: {result.out[:200]!r}")
    return problems


def test_every_bad_input_is_answered(world, files):
    cases = _cases(world, files)
    assert len(cases) >= 120, len(cases)
    assert len({c.name for c in cases}) == len(cases), "case names repeat"
    failures = {}
    for c in cases:
        problems = _check(c)
        if problems:
            failures[c.name] = problems
    assert not failures, "\n".join(f"{name}: {'; '.join(p)}" for name, p in failures.items())


def test_kinds_and_codes_are_the_documented_table():
    from ledger.errors import KINDS

    assert {kind: int(code) for kind, code in KINDS.items()} == {
        "findings": 1,
        "usage": 2,
        "bad_input": 3,
        "wrong_state": 4,
        "conflict": 5,
        "busy": 6,
        "not_allowed": 7,
    }
