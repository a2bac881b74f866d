"""Test packages; a package so that `python -m tests.sim.soak` resolves."""
