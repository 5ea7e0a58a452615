"""The stand-in's model declarations against the host's, read from both sources.

For every mirrored model and enum, each field declaration (field class, positional arguments,
keyword arguments but ``help_text``), the ``Meta`` options that shape the schema and the
enum members must be written the same way as in the host's source — translation wrappers
aside. What the stand-in leaves out or declares differently on purpose is listed below (and in
``docs/host-fidelity.md``); anything else that differs fails. Skipped without a host checkout.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.host.conftest import HOST_CHECKOUT
from tests.pytest_skips import skip_without_host_checkout

STAND_IN = Path(__file__).resolve().parents[2]

MIRRORED = {
    "commcare_connect/utils/db.py": ["BaseModel"],
    "commcare_connect/users/models.py": ["User"],
    "commcare_connect/organization/models.py": ["Organization"],
    "commcare_connect/program/models.py": ["Program"],
    "commcare_connect/opportunity/models.py": [
        "DeliveryType",
        "Currency",
        "Country",
        "Opportunity",
        "OpportunityVerificationFlags",
        "XFormBaseModel",
        "OpportunityAccess",
        "PaymentUnit",
        "DeliverUnit",
        "VisitValidationStatus",
        "ExchangeRate",
        "InvoiceStatus",
        "PaymentInvoice",
        "Payment",
        "CompletedWorkStatus",
        "CompletedWork",
        "VisitReviewStatus",
        "UserVisit",
        "OpportunityClaim",
        "OpportunityClaimLimit",
    ],
}

# Host fields the stand-in does not have (models it does not mirror sit behind them).
LEFT_OUT = {
    ("Organization", "members"),  # through UserOrganizationMembership
    ("Organization", "llo_entity"),
    ("Organization", "countries"),
    ("Organization", "primary_sectors"),
    ("Opportunity", "learn_app"),  # CommCareApp
    ("Opportunity", "deliver_app"),
    ("Opportunity", "api_key"),  # HQApiKey
    ("Opportunity", "hq_server"),  # HQServer
    ("UserVisit", "work_area"),  # microplanning.WorkArea
}
# Declared differently on purpose.
DIFFERENT = {
    ("DeliverUnit", "app"),  # a foreign key to CommCareApp in the host; text here
    ("Payment", "date_paid"),  # the host's default is the naive datetime.utcnow
    # The host's __init__/__setattr__ stamping lives in a mixin here.
    ("CompletedWork", "<bases>"),
    ("UserVisit", "<bases>"),
}

TRANSLATIONS = {"_", "gettext", "gettext_lazy"}


class _Unwrap(ast.NodeTransformer):
    """``_("text")`` and ``gettext("text")`` become ``"text"``."""

    def visit_Call(self, node):
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id in TRANSLATIONS and node.args:
            return node.args[0]
        return node


def _declarations(path: Path, names: list[str]) -> dict[str, dict[str, str]]:
    tree = _Unwrap().visit(ast.parse(path.read_text()))
    found: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef) or node.name not in names:
            continue
        decl = found[node.name] = {"<bases>": ", ".join(ast.unparse(b) for b in node.bases)}
        for item in node.body:
            if isinstance(item, ast.Assign) and len(item.targets) == 1:
                target = item.targets[0]
                if isinstance(target, ast.Name) and not target.id.isupper():
                    value = item.value
                    if isinstance(value, ast.Call):
                        value.keywords = [k for k in value.keywords if k.arg != "help_text"]
                    decl[target.id] = ast.unparse(value)
            if isinstance(item, ast.ClassDef) and item.name == "Meta":
                for option in item.body:
                    if isinstance(option, ast.Assign):
                        name = option.targets[0].id
                        if name in ("unique_together", "constraints", "indexes", "abstract"):
                            decl[f"Meta.{name}"] = ast.unparse(option.value)
    return found


@pytest.mark.parametrize("relative", list(MIRRORED))
def test_declarations_match_the_host(relative):
    host_file = HOST_CHECKOUT / relative
    if not host_file.exists():
        skip_without_host_checkout(HOST_CHECKOUT)
    names = MIRRORED[relative]
    host = _declarations(host_file, names)
    ours = _declarations(STAND_IN / relative, names)
    assert sorted(ours) == sorted(names), "a mirrored class is missing here"
    assert sorted(host) == sorted(names), "a mirrored class is gone from the host"

    problems = []
    for model in names:
        for name, declared in host[model].items():
            if name not in ours[model]:
                if (model, name) not in LEFT_OUT:
                    problems.append(f"{model}.{name}: missing here (host: {declared})")
            elif ours[model][name] != declared and (model, name) not in DIFFERENT:
                problems.append(f"{model}.{name}: {ours[model][name]}  !=  host {declared}")
        for name in ours[model]:
            if name not in host[model]:
                problems.append(f"{model}.{name}: not in the host")
    assert problems == []


def test_the_lists_of_differences_are_still_needed():
    """An entry of LEFT_OUT or DIFFERENT that no longer differs should be dropped."""
    if not (HOST_CHECKOUT / "commcare_connect/opportunity/models.py").exists():
        skip_without_host_checkout(HOST_CHECKOUT)
    host, ours = {}, {}
    for relative, names in MIRRORED.items():
        host.update(_declarations(HOST_CHECKOUT / relative, names))
        ours.update(_declarations(STAND_IN / relative, names))
    for model, name in LEFT_OUT:
        assert name in host[model] and name not in ours[model], (model, name)
    for model, name in DIFFERENT:
        assert host[model][name] != ours[model][name], (model, name)
