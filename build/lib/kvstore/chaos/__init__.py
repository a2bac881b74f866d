"""Fault-injection testing of the key-value store, in the style of Jepsen and Porcupine.

Clients record a history of operations against a cluster under faults (`history`); the
checker then decides whether some order of those operations, consistent with real time
and with the key-value model, explains every result (`linearizability`). This package is
the core of the future `kv chaos` command and deliberately has no dependency on the
server: it judges the store only through what clients observed.
"""
