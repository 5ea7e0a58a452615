"""A read-only Django admin over the ledger: batches, planned changes, events, recomputes and
lifecycle entries, for auditors.

Nobody edits the ledger here — add, change and delete are refused to everyone, superusers
included (the database refuses them too); staff with the ``view`` permissions can look.

* Lists are compact: batch ids shortened to eight characters (the full id on hover and on the
  batch page), times to the second, the operator and the reason on every event row, and each
  batch id, entity, access and opportunity a link to its events.
* A batch page shows its lifecycle entries, the priced plan as tables with totals per currency
  and a small server-rendered chart of the accrual change per opportunity, the recompute
  outcomes, lineage, scope, skipped conflicts and the first events. An event page shows the
  entity's whole timeline and what each undo of its batch did with it (inverted, or skipped and
  why).
* Lists stay fast on millions of rows: no full counts (:class:`EstimatedCountPaginator`), and
  only lookups an index serves — see :mod:`ledger.admin.lookups`; any other query parameter
  (``?reason__icontains=…``) is refused with a message.
* Django's "History" (its log of admin edits, always empty here) is replaced by links to the
  ledger's own record.

The host links its visit and completed-work admins here with
:class:`ledger.admin_links.CorrectionsLinkMixin` (docs/admin.md).
"""

from ledger.admin import batches, events, others  # noqa: F401 - registers the admins
from ledger.admin.base import EXACT_COUNT_UP_TO, EstimatedCountPaginator, ReadOnlyAdmin
from ledger.admin.search import event_search

# Kept for callers of the single-module admin.
_search_filter = event_search

__all__ = ["EXACT_COUNT_UP_TO", "EstimatedCountPaginator", "ReadOnlyAdmin", "event_search"]
