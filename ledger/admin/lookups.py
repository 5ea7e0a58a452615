"""The lookups the ledger's lists offer, each backed by an index.

A list filter here names the column it filters. It is *indexed* when an index of the model
leads with that column (its primary key, a foreign key's index, a unique constraint or a
``Meta.indexes`` entry): the filter is offered, and a list filtered by it reads one index range.
A filter on a column no index leads is *narrowing*: it refines a selection an indexed filter (or
the search) already made — the statuses within a batch, say — and is refused on its own, so it
never makes PostgreSQL walk a million-row table. A filter declared ``indexed`` whose index does
not exist (yet) is simply not offered; adding the index to the model brings it in.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import SEARCH_VAR
from django.db import models
from django.db.models import Q

# --------------------------------------------------------------------------------------------
# Which indexes lead with a column
# --------------------------------------------------------------------------------------------


def leading_indexes(model, column: str) -> list[str]:
    """Names of the model's indexes whose first column is ``column`` (a database column name).

    Partial indexes are left out: they serve only queries repeating their condition.
    """
    opts = model._meta
    found = []
    for field in opts.concrete_fields:
        if field.column != column:
            continue
        if field.primary_key:
            found.append(f"{opts.db_table}_pkey")
        elif field.unique:
            found.append(f"unique {field.column}")
        elif field.db_index:
            found.append(f"index on {field.column}")
    columns = {f.name: f.column for f in opts.concrete_fields}
    for index in opts.indexes:
        if index.condition is None and index.fields:
            if columns.get(index.fields[0].lstrip("-")) == column:
                found.append(index.name)
    for constraint in opts.constraints:
        fields = getattr(constraint, "fields", ())
        if (
            isinstance(constraint, models.UniqueConstraint)
            and fields
            and constraint.condition is None
        ):
            if columns.get(fields[0]) == column:
                found.append(constraint.name)
    return found


def partial_index(model, name: str):
    for index in model._meta.indexes:
        if index.name == name:
            return index
    return None


# --------------------------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------------------------


class LedgerFilter(admin.ListFilter):
    """A list filter on one query parameter, indexed or narrowing (see the module's docstring)."""

    parameter_name: str = ""
    # The database columns the filter's condition uses; each must lead an index unless the
    # filter narrows. (Several: an OR of conditions, e.g. a work and its visits.)
    columns: tuple[str, ...] = ()
    narrows = False

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        if self.parameter_name in params:
            value = params.pop(self.parameter_name)
            value = value[-1] if isinstance(value, list) else value
            if value.strip():
                self.used_parameters[self.parameter_name] = value.strip()

    @classmethod
    def offered(cls, model) -> bool:
        return cls.narrows or all(leading_indexes(model, c) for c in cls.columns)

    @classmethod
    def indexes(cls, model) -> list[str]:
        return [name for c in cls.columns for name in leading_indexes(model, c)]

    @classmethod
    def indexed_for(cls, value: str) -> bool:
        """Whether this value alone selects through an index (a narrowing filter's never does)."""
        return not cls.narrows

    def value(self) -> str | None:
        return self.used_parameters.get(self.parameter_name)

    def has_output(self) -> bool:
        if self.narrows:
            return bool(getattr(self.request, "ledger_selection", False))
        return True

    def expected_parameters(self):
        return [self.parameter_name]

    def condition(self, value: str) -> Q:
        raise NotImplementedError

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        try:
            return queryset.filter(self.condition(value))
        except (ValueError, TypeError) as error:
            raise IncorrectLookupParameters(str(error)) from None


class ChoiceFilter(LedgerFilter):
    """Fixed choices (no ``SELECT DISTINCT`` over the table to find them)."""

    column_name = ""  # the model field filtered

    def lookups(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def condition(self, value):
        if value not in dict(self.lookups()):
            raise ValueError(f"{value!r} is not one of the choices")
        return Q(**{self.column_name: value})

    def choices(self, changelist):
        current = self.value()
        yield {
            "selected": current is None,
            "query_string": changelist.get_query_string(remove=[self.parameter_name, "p"]),
            "display": "All",
        }
        for value, label in self.lookups():
            yield {
                "selected": current == value,
                "query_string": changelist.get_query_string(
                    {self.parameter_name: value}, remove=["p"]
                ),
                "display": label,
            }


class InputFilter(LedgerFilter):
    """A sidebar text box taking one typed value (an id, a UUID)."""

    template = "admin/ledger/input_filter.html"
    placeholder = ""

    def choices(self, changelist):
        hidden = [
            (key, value)
            for key, value in self.request.GET.items()
            if key not in (self.parameter_name, "p", "e")
        ]
        yield {
            "name": self.parameter_name,
            "value": self.value() or "",
            "placeholder": self.placeholder,
            "hidden": hidden,
            "clear_url": changelist.get_query_string(remove=[self.parameter_name]),
        }


def bigint(value: str) -> int:
    number = int(value)
    if not 0 < number < 2**63:
        raise ValueError(f"{value} is out of range")
    return number


def choice_filter(title: str, parameter: str, field: str, choices, *, narrows: bool = False):
    """A :class:`ChoiceFilter` class over ``field`` with fixed ``choices`` ((value, label)…)."""
    fixed = [(str(v), str(label)) for v, label in choices]
    return type(
        f"{parameter.title().replace('_', '')}Filter",
        (ChoiceFilter,),
        {
            "title": title,
            "parameter_name": parameter,
            "column_name": field,
            "columns": (field,),
            "narrows": narrows,
            "lookups": lambda self: fixed,
        },
    )


class BatchFilter(InputFilter):
    title = "batch"
    parameter_name = "batch__id__exact"
    placeholder = "batch id (UUID)"
    columns = ("batch_id",)

    def condition(self, value):
        return Q(batch_id=uuid.UUID(value))


class AccessFilter(InputFilter):
    title = "access"
    parameter_name = "access_id"
    placeholder = "access id"
    columns = ("access_id",)

    def condition(self, value):
        return Q(access_id=bigint(value))


class OpportunityFilter(InputFilter):
    title = "opportunity"
    parameter_name = "opportunity_id"
    placeholder = "opportunity id or UUID"
    columns = ("opportunity_id",)

    def condition(self, value):
        from ledger.host import Opportunity

        if value.isdigit():
            return Q(opportunity_id=bigint(value))
        key = uuid.UUID(value)
        pk = Opportunity.objects.filter(opportunity_id=key).values_list("pk", flat=True).first()
        return Q(opportunity_id=pk) if pk is not None else Q(pk__in=[])


class NarrowingOpportunityFilter(OpportunityFilter):
    narrows = True


class VisitFilter(InputFilter):
    """One visit's events: ``(entity_kind, entity_id)``."""

    title = "visit"
    parameter_name = "visit_id"
    placeholder = "visit id"
    columns = ("entity_kind",)

    def condition(self, value):
        return Q(entity_kind="visit", entity_id=bigint(value))


class CompletedWorkFilter(InputFilter):
    """One completed work's events and its visits' (``completed_work_id`` names the work on
    both), as ``corrections history --completed-work`` selects them."""

    title = "completed work"
    parameter_name = "completed_work_id"
    placeholder = "completed work id"
    columns = ("entity_kind", "completed_work_id")

    def condition(self, value):
        pk = bigint(value)
        return Q(entity_kind="completed_work", entity_id=pk) | Q(completed_work_id=pk)


# --------------------------------------------------------------------------------------------
# Screening a request's parameters
# --------------------------------------------------------------------------------------------


def active_selection(params: Mapping[str, str], filters: Iterable[type[LedgerFilter]]) -> bool:
    """Whether the request selects through an index: the search, or an indexed filter's value."""
    if (params.get(SEARCH_VAR) or "").strip():
        return True
    for f in filters:
        value = (params.get(f.parameter_name) or "").strip()
        if value and f.indexed_for(value):
            return True
    return False


def refused_parameters(
    params: Mapping[str, str],
    filters: Iterable[type[LedgerFilter]],
    allowed: set[str],
    searchable: bool,
) -> list[tuple[str, str]]:
    """(parameter, why) for each query parameter the list will not run."""
    filters = list(filters)
    by_name = {f.parameter_name: f for f in filters}
    indexed = [f.title for f in filters if not f.narrows]
    narrowing = [f.title for f in filters if f.narrows]
    offered = f"it filters by {_listed(indexed) or 'nothing'}"
    if narrowing:
        offered += f" (each read through an index), then by {_listed(narrowing)} within that"
    if searchable:
        offered += ", and searches exactly"
    selected = active_selection(params, filters)
    refused = []
    for name in params:
        if name not in allowed:
            refused.append((name, offered))
            continue
        f = by_name.get(name)
        value = (params.get(name) or "").strip()
        if f is not None and value and not f.indexed_for(value) and not selected:
            ways = [*indexed, "the search"] if searchable else indexed
            refused.append(
                (
                    name,
                    f"no index serves {f.title} alone; it narrows a selection made first by "
                    f"{_listed(ways, 'or')}",
                )
            )
    return refused


def _listed(words: list[str], last: str = "and") -> str:
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} {last} {words[-1]}"
