"""The ledger's contract suite: its promises, proved on the host it is installed in.

It ships inside the ``ledger`` package and runs unchanged in any Django project that installs
the ledger next to CommCare Connect (or a faithful stand-in of it)::

    pytest --pyargs ledger.contract --ds=your.settings      # pytest-django and model-bakery

The data is built with model_bakery on the host's own models (through :mod:`ledger.host`),
made consistent by the host's own recompute, and every promise is checked against the host's
own code: the priced plan's accruals, a clean ``verify`` after apply, an undo that restores
every cell, events that agree with state, a history the database keeps append-only, the
whole-work rule and the exclusions. The tests commit (the ledger's apply and undo do), so they
use transactional databases.
"""
