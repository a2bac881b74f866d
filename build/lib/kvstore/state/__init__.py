"""The replicated state: commands, the deterministic state machine, result and value
types, the snapshot format and the member directory. Pure: no I/O, no clock, so the
simulator runs the very same code as the nodes.
"""
