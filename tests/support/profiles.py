"""Hypothesis profiles: ``fast`` for the inner loop, the default for ``make test``.

``make test-fast`` runs with ``--hypothesis-profile=fast``: each property tries 20
examples instead of 100, which keeps the fast tier well inside its time budget;
``make test`` runs the same tests with the default 100 (and CI runs ``make test``).
A test that sets its own ``max_examples`` keeps it in both.
"""

from hypothesis import settings

settings.register_profile("fast", max_examples=20)
