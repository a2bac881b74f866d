"""Incarnations: which life of a data directory a node id is living, and which lives of
its peers this node has seen.

Why: an empty data directory is what a brand-new founder has, and also what a wiped or
replaced disk looks like. Founding from the second forgets the votes the node cast and
the entries it acknowledged. So every data directory gets a random incarnation id at
its first start (`raft/INCARNATION`, written atomically and fsynced before the node sends
anything), every peer request carries it (`X-Raft-Incarnation`), and every receiver
keeps, per sender, the last incarnation it has seen (`seen_incarnations.json`,
rewritten atomically only when it changes: at a first contact or a new disk, rarely).
A pristine founder asks its peers (kvstore.runtime.founding): a peer that has seen
this node id before proves that the id had a life with promises in it.

`kv snapshot restore` leaves `raft/RESTORED` in each directory it seeds, so that an unseeded
founder can learn from a seeded peer that it must not found a history of its own.
The randomness here is the runtime's: the consensus core never sees it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from consensus.types import NodeId

log = logging.getLogger("kvstore.incarnation")

LOG_DIR = "raft"
"""The log's directory: the incarnation and the restore marker live and die with it, so
that a lost or wiped log (even with the rest of the data directory kept) is a new life."""
INCARNATION_FILE = "INCARNATION"
SEEN_FILE = "seen_incarnations.json"
RESTORED_FILE = "RESTORED"
_VALID = re.compile(r"[0-9a-f]{32}")


class IncarnationError(Exception):
    """A damaged incarnation file: the node cannot tell which life it is living."""


def valid_incarnation(text: str | None) -> bool:
    """What a sender may claim: 32 lower-case hex digits, nothing else."""
    return text is not None and _VALID.fullmatch(text) is not None


def write_atomic(path: Path, text: str) -> None:
    """Write, fsync, rename into place, fsync the directory: after a crash the file is
    either the old one or the new one, never a torn mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_incarnation(data_dir: Path) -> str | None:
    """This data directory's incarnation, or None before its first start."""
    try:
        text = (data_dir / LOG_DIR / INCARNATION_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    if not valid_incarnation(text):
        path = data_dir / LOG_DIR / INCARNATION_FILE
        raise IncarnationError(f"{path} is damaged ({text[:40]!r})")
    return text


def ensure_incarnation(data_dir: Path) -> str:
    """This directory's incarnation, created at its first start."""
    found = read_incarnation(data_dir)
    if found is not None:
        return found
    (data_dir / LOG_DIR).mkdir(parents=True, exist_ok=True)
    fresh = secrets.token_hex(16)
    write_atomic(data_dir / LOG_DIR / INCARNATION_FILE, fresh + "\n")
    log.info("first start of %s: incarnation %s", data_dir, fresh)
    return fresh


def mark_restored(data_dir: Path, description: str) -> None:
    """`kv snapshot restore` seeded this directory (kept for good: it is a fact)."""
    write_atomic(data_dir / LOG_DIR / RESTORED_FILE, description + "\n")


def was_restored(data_dir: Path) -> bool:
    return (data_dir / LOG_DIR / RESTORED_FILE).exists()


class NodeIncarnations:
    """This node's own incarnation (created at its first start), whether it was seeded
    by a restore, and per sender id the last incarnation it has seen, persisted in its
    own data directory. Forgetting a removed member lets a replaced disk join again."""

    def __init__(self, data_dir: Path) -> None:
        self.own = ensure_incarnation(data_dir)
        self.restored = was_restored(data_dir)
        self._path = data_dir / SEEN_FILE
        self._seen: dict[NodeId, str] = {}
        try:
            raw = json.loads(self._path.read_text())
        except FileNotFoundError:
            return
        except ValueError as exc:
            raise IncarnationError(f"{self._path} is damaged: {exc}") from None
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and valid_incarnation(v) for k, v in raw.items()
        ):
            raise IncarnationError(f"{self._path} is damaged: not a map of incarnations")
        self._seen = raw

    def get(self, node_id: NodeId) -> str | None:
        return self._seen.get(node_id)

    def saw(self, node_id: NodeId, incarnation: str) -> None:
        """A peer request from `node_id` claimed `incarnation` (already authenticated)."""
        before = self._seen.get(node_id)
        if before == incarnation:
            return
        if before is not None:
            log.warning(
                "node %s speaks with a new incarnation %s (was %s): its data directory "
                "was replaced; if it was not removed and joined again, it may have "
                "forgotten its votes and acknowledged entries",
                node_id,
                incarnation,
                before,
            )
        self._seen[node_id] = incarnation
        self._save()

    def forget(self, node_ids: Iterable[NodeId]) -> None:
        """Members whose removal applied: a new disk under the same id may join again."""
        gone = [n for n in node_ids if n in self._seen]
        for node_id in gone:
            del self._seen[node_id]
        if gone:
            self._save()

    def _save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path, json.dumps(self._seen, sort_keys=True) + "\n")
