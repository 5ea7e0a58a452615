"""Planners: read-only rules that turn a scope into planned changes.

A planner never writes. It returns :class:`~ledger.planners.rows.PlannedRow` tuples — one per
completed work and one per visit it would flip, plus the ones it deliberately leaves alone with
an exclusion reason — for the services to price, store and later project.
"""
