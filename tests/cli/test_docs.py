"""The documentation lists every setting with its default, and the exit codes as the code has
them."""

from __future__ import annotations

import re
from pathlib import Path

from ledger import conf
from ledger.errors import KINDS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_setting_is_in_one_table_with_its_default():
    text = (DOCS / "api.md").read_text()
    rows = dict(re.findall(r"^\| `LEDGER_([A-Z_]+)` \| `?([^|`]+)`? \|", text, re.MULTILINE))
    assert set(rows) == set(conf.DEFAULTS), set(conf.DEFAULTS) ^ set(rows)
    for name, default in conf.DEFAULTS.items():
        assert rows[name].strip() == repr(default).replace("'", '"'), name


def test_the_exit_code_table_is_the_codes():
    text = (DOCS / "cli.md").read_text()
    rows = re.findall(r"^\| (\d) \| `(\w+)` \|", text, re.MULTILINE)
    assert {kind: int(code) for code, kind in rows} == {k: int(c) for k, c in KINDS.items()}
