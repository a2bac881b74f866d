"""Backup files (`kv snapshot save`) and seeding a new cluster from one (`kv snapshot restore`).

File format (version 1), all integers big-endian:

    magic    8 bytes   b"KVSNAP\\x00\\x01"
    hlen     4 bytes   length of the header
    header   hlen      UTF-8 JSON: {"format": 1, "index": I, "term": T, "size": N,
                       "cluster": name, "taken_from": node id, "voters": [...],
                       "learners": [...], "revision": R, "keys": K}
    data     N bytes   the state machine snapshot (kvstore.sm_snapshot format), the
                       state after applying log entry I (of term T)
    trailer  32 bytes  SHA-256 of everything before it

A node serves it at `GET /v1/snapshot` from the leader after a ReadIndex barrier, so
the file holds every write acknowledged before the request.

Restoring never touches a running cluster: it writes the snapshot into the empty data
dirs of a NEW cluster (its own cluster.toml, its own ports), with the new file's
founders as the voters and the old member directory dropped, so the new cluster starts
at index I with every key, value and version of the old one. Each seeded directory
is marked (kvstore.runtime.incarnation), so that an unseeded founder of the new file
refuses to found a history of its own while a seeded peer answers.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consensus.types import HardState, Membership, SnapshotMeta
from kvstore.config import ClusterConfig
from kvstore.runtime.incarnation import mark_restored
from kvstore.runtime.leveldb_storage import LevelDBStorage
from kvstore.state.machine import KVStateMachine, SnapshotError

MAGIC = b"KVSNAP\x00\x01"
_LEN = struct.Struct(">I")
_DIGEST = 32
FORMAT = 1


class BackupError(Exception):
    """A file that is not a complete, intact backup, or a restore that must not happen."""


@dataclass(frozen=True, slots=True)
class Backup:
    header: dict[str, Any]
    data: bytes

    @property
    def index(self) -> int:
        return int(self.header["index"])

    @property
    def term(self) -> int:
        return int(self.header["term"])


def encode_backup(header: dict[str, Any], data: bytes) -> bytes:
    head = json.dumps({"format": FORMAT, **header, "size": len(data)}, sort_keys=True).encode()
    body = MAGIC + _LEN.pack(len(head)) + head + data
    return body + hashlib.sha256(body).digest()


def decode_backup(blob: bytes) -> Backup:
    """Check magic, lengths and the SHA-256 trailer; BackupError says what is wrong."""
    if len(blob) < len(MAGIC) + _LEN.size + _DIGEST or not blob.startswith(MAGIC):
        raise BackupError("not a pyraftkv snapshot file (bad magic or too short)")
    body, digest = blob[:-_DIGEST], blob[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise BackupError("the file is damaged or truncated: its SHA-256 does not match")
    (hlen,) = _LEN.unpack_from(body, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    try:
        header = json.loads(body[start : start + hlen])
    except ValueError as exc:
        raise BackupError(f"unreadable header: {exc}") from None
    data = body[start + hlen :]
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BackupError(f"unsupported snapshot file format {header!r:.80}")
    if header.get("size") != len(data):
        raise BackupError("the header's size does not match the data")
    for key in ("index", "term"):
        if type(header.get(key)) is not int or header[key] < 0:
            raise BackupError(f"bad {key} in the header")
    return Backup(header, data)


def read_backup(path: Path) -> Backup:
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_backup(blob)


def restore_cluster(
    backup: Backup, cluster: ClusterConfig, node_ids: list[str] | None = None
) -> list[str]:
    """Seed the data dirs of `cluster`'s founders (or `node_ids` of them) from `backup`.

    Every target must be empty: refusing is the only safe answer for a dir holding a
    log, which would otherwise mix two clusters' histories. Returns one line per node.
    """
    founders = cluster.founders
    targets = list(node_ids) if node_ids else list(founders)
    for node_id in targets:
        node = cluster.node(node_id)
        if node_id not in founders:
            raise BackupError(f"{node_id} has join = true: start it empty and add it instead")
        if node.data_dir.exists() and any(node.data_dir.iterdir()):
            raise BackupError(f"data directory {node.data_dir} of {node_id} is not empty")
    sm = KVStateMachine()
    try:
        sm.restore(backup.data)
    except SnapshotError as exc:
        raise BackupError(str(exc)) from None
    if sm.applied_index != backup.index:
        raise BackupError(f"data is at index {sm.applied_index}, header says {backup.index}")
    sm.reset_members()  # the new cluster's members are its own file's nodes
    data = sm.snapshot()
    meta = SnapshotMeta(backup.index, backup.term, Membership(founders))
    lines = []
    for node_id in targets:
        node = cluster.node(node_id)
        node.data_dir.mkdir(parents=True, exist_ok=True)
        storage = LevelDBStorage(node.data_dir / "raft")
        try:
            storage.apply_snapshot(meta, data)
            # Elections continue above the snapshot's term, so log terms keep rising.
            storage.save(HardState(backup.term, None, backup.index), [])
        finally:
            storage.close()
        # Lets an unseeded founder learn from this node that it must be seeded too.
        mark_restored(node.data_dir, f"index {backup.index} term {backup.term}")
        lines.append(
            f"{node_id}: seeded {node.data_dir} at index {backup.index} (term {backup.term}, "
            f"{len(sm)} keys, voters {', '.join(founders)})"
        )
    return lines
