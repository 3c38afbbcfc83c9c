"""Helpers shared by the test modules (``tests/`` is on ``sys.path`` through ``tests/conftest.py``):
test modules import from here, never from one another."""
