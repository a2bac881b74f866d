"""Deterministic simulator for the Raft core: seeded network, crashing disks, invariant checkers.

Everything that touches time, randomness, the network or the disk is simulated and driven
from one `random.Random(seed)`, so that any failing fault schedule replays from its seed
(`python -m tests.sim.soak --replay SEED`).
"""
