"""The contract suite bites: against a copy of the stand-in with one accrual rule broken, it
fails — in its money table — for each rule a host could change (tools/contract_mutations.py).

Each case runs the whole contract suite in a subprocess on a test database of its own.
"""

from __future__ import annotations

import pytest

from tools.contract_mutations import MUTATIONS, run

pytestmark = pytest.mark.slow


def test_the_unbroken_copy_passes():
    outcome = run(None)
    assert not outcome.error, outcome.error
    assert outcome.failed == 0 and outcome.passed >= 20


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_a_broken_accrual_rule_fails_the_money_table(mutation):
    outcome = run(mutation)
    assert not outcome.error, outcome.error
    assert outcome.table_failed >= 1, f"{mutation.what}: the contract suite still passes"
