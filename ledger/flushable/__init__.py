"""``ledger.flushable``: a ``flush`` command that can empty the ledger's tables — for test
settings only.

The ledger's tables refuse TRUNCATE, so Django's ``flush`` — which transactional test cases
(``TransactionTestCase``, ``django_db(transaction=True)``) run after every test — fails on a
database holding them. Add this app to ``INSTALLED_APPS`` in the *test* settings and ``flush``
lifts the ledger's TRUNCATE guards, and nothing else, on test databases (names starting with
``test_``, or listed in ``LEDGER_FLUSHABLE_DATABASES``). Projects that do not add it keep
Django's own ``flush``.
"""
