"""The backend contract: what every ipcsem backend promises, tested through
the public API only.

Like CPython's ``Lib/test/lock_tests.py``, one set of tests is bound to
several implementations.  Each test takes the ``backend`` fixture (a
:class:`~contract.bindings.Backend`: ``open(name, ...)``, ``mutex(...)``,
``names()``, ``unlink()``, ``spawn_holder(...)``, ``agent()``,
``can_take_all(...)``), which is parametrized over every binding in
``contract.bindings.BINDINGS``.  Nothing in a test names a backend, so a new
backend is one new binding (a URL, how to start and stop its server, the
facets it has), not an edit of any test.

What is here (every promise of the README that is not specific to shared
memory): counting and all-or-nothing multi-unit grants (test_counting);
strict FIFO, the 2-unit head never overtaken, priorities (test_order);
blocking, try, timeouts in ipcsem's, threading's and multiprocessing's
calling forms, signals during a wait (test_waiting); typed errors with their
facts, bad arguments and over-release changing nothing, creation-time policy
(test_errors); holders(), waiters(), available, names(), unlink
(test_observation); leases, fencing tokens and slots (test_leases); the
mutex (test_mutex); a SIGKILLed holder's and waiter's units coming back,
through ipcsem.testing's real processes (test_recovery).
"""
