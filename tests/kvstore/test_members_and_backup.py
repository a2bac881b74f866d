"""The member directory in the state machine, the runtime's view of members, the backup
file format and seeding a new cluster from it."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from consensus import ConfChange, ConfChangeType, Entry, EntryType, Membership
from consensus.membership import bootstrap_change, encode_conf_change
from kvstore.config import ConfigError, load_cluster_config
from kvstore.runtime.backup import BackupError, decode_backup, encode_backup, restore_cluster
from kvstore.runtime.leveldb_storage import LevelDBStorage
from kvstore.runtime.member_view import MemberView
from kvstore.state.commands import Put, encode_command
from kvstore.state.machine import KVStateMachine
from kvstore.state.members import MemberAddress, encode_member_context

BOOTSTRAP = bootstrap_change(("n1", "n2", "n3"))
A4 = MemberAddress("http://127.0.0.1:9004", "http://127.0.0.1:9104")


def conf(index: int, kind: ConfChangeType, node: str, context: bytes = b"") -> Entry:
    return Entry(
        1, index, encode_conf_change(ConfChange(kind, node, context)), EntryType.CONF_CHANGE
    )


def history() -> list[Entry]:
    return [
        Entry(
            1, 1, encode_conf_change(bootstrap_change(("n1", "n2", "n3"))), EntryType.CONF_CHANGE
        ),
        Entry(2, 2, encode_command(Put("k", b"v", None, None))),
        conf(3, ConfChangeType.ADD_LEARNER, "n4", encode_member_context(A4)),
        conf(4, ConfChangeType.PROMOTE, "n4"),
        conf(5, ConfChangeType.REMOVE, "n1"),
    ]


def applied(entries: list[Entry]) -> KVStateMachine:
    sm = KVStateMachine()
    for entry in entries:
        sm.apply(entry)
    return sm


def test_conf_changes_build_the_same_directory_on_every_replica() -> None:
    a, b = applied(history()), applied(history())
    assert dict(a.member_addresses) == {"n4": A4}
    assert a.removed_members == {"n1"}
    assert a.snapshot() == b.snapshot()
    copy = KVStateMachine()
    copy.restore(a.snapshot())
    assert dict(copy.member_addresses) == {"n4": A4} and copy.removed_members == {"n1"}
    assert copy.snapshot() == a.snapshot()


def test_readding_a_removed_member_and_changes_without_addresses() -> None:
    entries = [
        *history(),
        conf(6, ConfChangeType.REMOVE, "n4"),
        conf(7, ConfChangeType.ADD_LEARNER, "n1", b"not msgpack \xc1"),
    ]
    sm = applied(entries)
    assert dict(sm.member_addresses) == {}  # n4 gone; n1 back without addresses
    assert sm.removed_members == {"n4"}


def test_a_format_1_snapshot_still_restores_with_an_empty_directory() -> None:
    sm = KVStateMachine()
    sm.restore(msgpack.packb([1, 10, 3, [["k", b"v", 1, 3, 3]], [], []]))
    assert sm.applied_index == 10 and sm.get("k") is not None
    assert dict(sm.member_addresses) == {} and sm.removed_members == frozenset()


def test_a_snapshot_view_is_not_changed_by_later_writes() -> None:
    sm = applied(history())
    view = sm.snapshot_view()
    before = sm.snapshot()
    sm.apply(Entry(2, 6, encode_command(Put("k", b"changed", None, None))))
    assert view.serialize() == before


# ---------------------------------------------------------------------- the runtime's view


def write_config(tmp: Path, *extra: str) -> Path:
    lines = ['[cluster]\nname = "t"\ndata_dir = "./data"\n']
    for i in (1, 2, 3):
        lines.append(
            f'[[nodes]]\nid = "n{i}"\nclient_url = "http://127.0.0.1:800{i}"\n'
            f'peer_url = "http://127.0.0.1:700{i}"\n'
        )
    path = tmp / "cluster.toml"
    path.write_text("\n".join([*lines, *extra]))
    return path


def test_member_view_merges_the_file_and_the_log(tmp_path: Path) -> None:
    config = load_cluster_config(write_config(tmp_path))
    view = MemberView("n2", config.nodes, config.data_dir)
    joining = view.refresh(Membership(()), {}, frozenset())
    assert set(joining) == {"n1", "n3"}  # not a member yet: it can answer any founder
    peers = view.refresh(Membership(("n2", "n3", "n4")), {"n4": A4}, frozenset({"n1"}))
    assert peers == {"n3": "http://127.0.0.1:7003", "n4": A4.peer_url}
    assert view.client_url("n4") == A4.client_url
    assert (view.admit("n1", None), view.admit("n4", None), view.admit("n9", None)) == (
        "removed",
        None,
        "unknown",
    )
    assert view.admit("n9", "http://127.0.0.1:7009") is None
    assert view.learn("n9", "http://127.0.0.1:7009")
    assert view.peer_urls()["n9"] == "http://127.0.0.1:7009"


def test_join_marks_non_founders_and_is_checked(tmp_path: Path) -> None:
    joiner = '[[nodes]]\nid = "n4"\nclient_url = "http://127.0.0.1:8004"\n'
    path = write_config(tmp_path, joiner + 'peer_url = "http://127.0.0.1:7004"\njoin = true\n')
    assert load_cluster_config(path).founders == ("n1", "n2", "n3")
    path.write_text(path.read_text().replace("join = true", 'join = "yes"'))
    with pytest.raises(ConfigError, match=r"nodes\[3\]\.join: expected a boolean"):
        load_cluster_config(path)


# ---------------------------------------------------------------------- backups


def test_backup_files_are_checked_end_to_end() -> None:
    blob = encode_backup({"index": 5, "term": 2}, b"state")
    backup = decode_backup(blob)
    assert (backup.index, backup.term, backup.data) == (5, 2, b"state")
    for damaged in (blob[:-1], blob[:20], b"x" + blob[1:], blob[:-40] + b"!" + blob[-39:]):
        with pytest.raises(BackupError):
            decode_backup(damaged)


def test_restore_seeds_empty_data_dirs_of_a_new_cluster(tmp_path: Path) -> None:
    source = applied(history())
    backup = decode_backup(encode_backup({"index": 5, "term": 3}, source.snapshot()))
    config = load_cluster_config(write_config(tmp_path))
    lines = restore_cluster(backup, config)
    assert len(lines) == 3 and "index 5" in lines[0]
    storage = LevelDBStorage(config.node("n2").data_dir / "raft")
    try:
        meta = storage.snapshot_meta()
        assert meta is not None and (meta.index, meta.term) == (5, 3)
        assert meta.membership == Membership(("n1", "n2", "n3"))
        assert storage.initial_state().term == 3  # new elections start above the old terms
        seeded = KVStateMachine()
        seeded.restore(storage.snapshot_data() or b"")
    finally:
        storage.close()
    assert seeded.get("k") == source.get("k")
    assert dict(seeded.member_addresses) == {}  # the old cluster's addresses are dropped
    with pytest.raises(BackupError, match="not empty"):
        restore_cluster(backup, config)
