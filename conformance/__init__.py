"""Side-by-side check of imageport's Image API against a real Glance (``make conformance``).

``python -m conformance.run`` starts Glance 33.0.0 (from ``.venv-glance``, under uWSGI) and
``imageport api`` (from this venv), both on 127.0.0.1, sends both the same scripted sequence of
requests (:mod:`conformance.scenario`), compares status and body shape per request
(:mod:`conformance.compare`) and prints a table of the differences. Not part of ``make test``.
"""
