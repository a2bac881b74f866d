"""Executing a transaction against a KeySpace: compares, then one branch, atomically.

Atomic because nothing in a branch can fail once it starts: every operation was checked
when the command was built (keys, values, no key written twice), so a branch either
runs to the end or, if the compares decide for the other branch, never starts. The whole
transaction is one log entry and, when it changes anything, one revision: every key it
writes gets that revision as mod_revision, as in etcd. Operations run in order, so a
read in a branch sees the writes before it.
"""

from __future__ import annotations

from dataclasses import replace

from kvstore.state.commands import Compare, Op, Target, Txn, TxnDeleteRange, TxnPut, TxnRange
from kvstore.state.keyspace import KeySpace
from kvstore.state.range import run_range
from kvstore.state.types import (
    DeleteRangeResult,
    KeyValue,
    OpResult,
    PutResult,
    TxnResult,
)


def holds(compare: Compare, kv: KeyValue | None) -> bool:
    """Whether the compare is true of the key's current state (`kv` None: missing)."""
    target, op, operand = compare.target, compare.op, compare.operand
    if target is Target.EXISTS:
        return (kv is not None) == (operand if op is Op.EQ else not operand)
    actual: int | bytes
    if target is Target.VALUE:
        if kv is None:
            return False
        actual = kv.value
    elif target is Target.VERSION:
        actual = 0 if kv is None else kv.version
    elif target is Target.CREATE_REVISION:
        actual = 0 if kv is None else kv.create_revision
    else:
        actual = 0 if kv is None else kv.mod_revision
    if op is Op.EQ:
        return actual == operand
    if op is Op.NE:
        return actual != operand
    if op is Op.LT:
        return actual < operand  # type: ignore[operator]
    return actual > operand  # type: ignore[operator]


def execute(space: KeySpace, txn: Txn) -> TxnResult:
    """Run `txn` (a write transaction, or a read-only one on a live store alike)."""
    succeeded = all(holds(c, space.get(c.key)) for c in txn.compares)
    revision = space.revision + 1
    changed = False
    results: list[OpResult] = []
    for op in txn.success if succeeded else txn.failure:
        if type(op) is TxnPut:
            kv = space.put(op.key, op.value, revision)
            results.append(PutResult(revision, kv.version))
            changed = True
        elif type(op) is TxnDeleteRange:
            deleted = space.delete_range(op.keys, revision)
            changed = changed or deleted > 0
            results.append(DeleteRangeResult(revision, deleted))
        else:
            assert type(op) is TxnRange
            results.append(run_range(space, op.query))
    if changed:
        space.commit(revision)
    final = space.revision
    return TxnResult(succeeded, final, tuple(_at(result, final) for result in results))


def _at(result: OpResult, revision: int) -> OpResult:
    """Every result of one transaction names the store revision after it."""
    return result if type(result) is PutResult else replace(result, revision=revision)
