"""Scripted scenarios on the simulated cluster, for histories that random schedules
reach only rarely. Each one asserts that the dangerous situation really arose, so a
pass is never vacuous, and relies on the checkers to catch any safety violation."""

from __future__ import annotations

from collections.abc import Callable

from consensus import AppendEntries, LeaderDurable, Message, ReadIndexRequest
from tests.sim.cluster import Cluster, Host, SimConfig
from tests.sim.network import NetConfig
from tests.sim.swarm import liveness_phase

REPLAY = "deterministic: rerun `pytest tests/sim/test_sim_scenarios.py -k {name}`"


def _until(cluster: Cluster, done: Callable[[], bool], limit: int, what: str) -> None:
    """Tick until `done()`; scenarios wait on conditions, never on fixed sleeps."""
    for _ in range(limit):
        if done():
            return
        cluster.tick()
    raise AssertionError(
        f"scenario stuck: {what} not reached in {limit} ticks\n{cluster.context()}"
    )


def _new_leader_commits_past(cluster: Cluster, a: Host) -> Host:
    """A is cut off but keeps leading (no CheckQuorum): wait for another leader, of a
    higher term, and for it to commit three writes past A's commit index."""
    assert a.node is not None
    _until(cluster, lambda: len(cluster.leaders()) == 2, 600, "a new leader beside A")
    n = next(h for h in cluster.leaders() if h is not a)
    assert n.node is not None and a.node.role.value == "leader" and n.node.term > a.node.term
    for _ in range(3):
        assert cluster.propose(to=n) is not None
    _until(
        cluster,
        lambda: n.node is not None and n.node.commit_index > a.node.commit_index + 2,
        100,
        "the new leader committing past A",
    )
    return n


def _deposed_with_its_read_failed(cluster: Cluster, a: Host, failed: int) -> None:
    """Heal; A learns of the newer term, fails its waiting read (more than `failed` reads
    failed in all), and the cluster passes the liveness phase and every check."""
    cluster.heal()
    _until(
        cluster, lambda: a.node is not None and a.node.role.value == "follower", 100, "A deposed"
    )
    assert cluster.counters.reads_failed > failed, "A's read must have been failed"
    liveness_phase(cluster)
    cluster.full_check()


def test_figure8_entry_of_an_older_term_is_not_committed_by_counting() -> None:
    """Raft paper, Figure 8. A is cut off with a tail of its own (term t); B is elected
    (term t') and crashes right after writing its no-op locally; A returns, is elected
    (term T) and copies its old tail to C one entry at a time, so the tail sits on a
    majority before A's no-op does. Then A crashes and B, whose last term t' beats C's
    t, is elected and overwrites that tail on C. Correct Raft never called the tail
    committed; a leader that commits old-term entries by counting replicas did, and
    the checkers see a committed entry overwritten."""
    config = SimConfig(
        nodes=3, max_batch_bytes=30, max_inflight=1, net=NetConfig(min_delay=1, max_delay=1)
    )
    cluster = Cluster(8, config, replay_hint=REPLAY.format(name="figure8"))
    _until(cluster, lambda: len(cluster.leaders()) == 1, 300, "a first leader")
    a = cluster.leaders()[0]
    assert a.node is not None
    _until(cluster, lambda: a.node is not None and a.node.commit_index > 1, 100, "no-op commit")
    k, t = a.node.log.last_index(), a.node.term

    cluster.isolate(a.nid)
    for _ in range(5):
        assert cluster.propose() is not None  # A's tail k+1..k+5 of term t, local only
    cluster.tick()
    assert a.disk.last_index() == k + 5

    def crash_new_leader(host: Host) -> None:
        if host is not a and host.node is not None and host.node.role.value == "leader":
            # Its no-op reaches its disk only: the appends it sends before persisting
            # are lost on the way, and it crashes before sending anything else.
            cluster.isolate(host.nid)
            cluster.crash(host.nid, before="send")

    cluster.watchers.append(crash_new_leader)
    _until(cluster, lambda: bool(cluster.crashed()), 400, "B elected and crashed")
    cluster.watchers.clear()
    cluster.tick()  # B's early appends, due now, meet the cut
    b = cluster.hosts[cluster.crashed()[0]]
    c = next(h for h in cluster.hosts.values() if h is not a and h is not b)
    b_noop = b.disk.entry(k + 1)
    assert b_noop is not None and b_noop.term > t, "B must hold a newer entry at k+1"

    cluster.heal()
    _until(
        cluster,
        lambda: a.node is not None and a.node.role.value == "leader" and a.node.term > b_noop.term,
        600,
        "A re-elected",
    )
    _until(cluster, lambda: c.disk.last_index() >= k + 2, 100, "A's old tail reaching C")
    a_tail = c.disk.entry(k + 1)
    assert a_tail is not None and a_tail.term == t
    assert c.disk.last_index() < k + 6, "A's no-op must not have reached C yet"
    cluster.crash(a.nid)

    cluster.restart(b.nid)
    _until(
        cluster,
        lambda: b.node is not None and b.node.role.value == "leader",
        600,
        "B elected over C",
    )
    _until(cluster, lambda: c.disk.entry(k + 1) == b_noop, 100, "B overwriting C's k+1")
    cluster.restart(a.nid)
    liveness_phase(cluster)
    cluster.full_check()


def test_lagging_follower_catches_up_from_a_snapshot() -> None:
    """A follower that was down while the leader compacted its log must be sent the
    snapshot, install it (storage and state machine) and continue from there."""
    cluster = Cluster(21, SimConfig(nodes=3), replay_hint=REPLAY.format(name="snapshot"))
    _until(cluster, lambda: len(cluster.leaders()) == 1, 300, "a first leader")
    leader = cluster.leaders()[0]
    lagging = next(h for h in cluster.hosts.values() if h is not leader)
    cluster.crash(lagging.nid)
    for _ in range(10):
        cluster.propose()
        cluster.tick(2)
    _until(cluster, lambda: leader.sm.applied_index >= 12, 200, "proposals applied")
    assert cluster.compact(leader)
    snapshot = leader.disk.storage.snapshot_meta()
    assert snapshot is not None and leader.disk.storage.first_index() > 2

    cluster.restart(lagging.nid)
    _until(
        cluster,
        lambda: lagging.disk.storage.snapshot_meta() == snapshot,
        600,
        "snapshot installed on the lagging follower",
    )
    _until(cluster, lambda: lagging.sm.payloads == leader.sm.payloads, 200, "state caught up")
    liveness_phase(cluster)
    cluster.full_check()


def test_leader_crashes_between_its_early_appends_and_its_fsync() -> None:
    """The core lets a leader send its appends before its own fsync
    (`Ready.messages_before_persist`). Here it crashes right after sending them: its
    disk never holds the entry, both followers persist it, and the next leader commits
    it. The checkers verify that no commit counted the leader's lost copy."""
    cluster = Cluster(5, SimConfig(nodes=3), replay_hint=REPLAY.format(name="early"))
    _until(cluster, lambda: len(cluster.leaders()) == 1, 300, "a first leader")
    leader = cluster.leaders()[0]
    hosts = cluster.hosts.values()
    _until(cluster, lambda: all(h.sm.applied_index >= 2 for h in hosts), 100, "no-op applied")
    durable = leader.disk.last_index()
    entry = cluster.propose()
    assert entry is not None
    cluster.crash(leader.nid, before="persist")
    cluster.tick()
    assert leader.node is None and leader.disk.last_index() == durable
    followers = [h for h in cluster.hosts.values() if h is not leader]
    _until(
        cluster,
        lambda: all(h.disk.entry(entry.index) == entry for h in followers),
        20,
        "the followers persisting the early appends",
    )
    _until(cluster, lambda: entry.data in cluster.applied_payloads, 300, "the entry committed")
    cluster.restart(leader.nid)
    liveness_phase(cluster)
    cluster.full_check()


def test_a_deposed_leader_never_serves_a_read_it_cannot_confirm() -> None:
    """A is cut off but keeps leading (no CheckQuorum); B is elected and commits past
    A's commit index; then a client reads on A. A read served before a quorum of A's
    term confirmed it would miss B's writes, and the checkers would see the stale read;
    A never gets that confirmation, so the read is failed when A learns of B's term."""
    config = SimConfig(nodes=3, check_quorum=False, net=NetConfig(min_delay=1, max_delay=1))
    cluster = Cluster(11, config, replay_hint=REPLAY.format(name="deposed_leader_read"))
    _until(cluster, lambda: len(cluster.leaders()) == 1, 300, "a first leader")
    a = cluster.leaders()[0]
    assert a.node is not None
    _until(cluster, lambda: a.node is not None and a.node.commit_index > 1, 100, "no-op commit")
    cluster.isolate(a.nid)
    _new_leader_commits_past(cluster, a)
    failed = cluster.counters.reads_failed
    assert cluster.read(to=a)
    for _ in range(20):
        cluster.tick()
    assert a.node.role.value == "leader" and a.reads, "A still leads, its read unserved"
    _deposed_with_its_read_failed(cluster, a, failed)


def test_a_durable_note_never_commits_a_follower_entry_of_an_older_term() -> None:
    """A leader A of term t sends an entry to F alone and crashes before its own fsync:
    F holds (t, k+1), nobody else does. Cut off, F misses the election of N (term T),
    whose no-op takes index k+1. F then hears N's heartbeats but not yet its appends
    (held back), forwards a client write, and gets N's durable note for it: N's log is
    durable past k+1, and so is F's, but F's k+1 is of term t, not N's entry. A follower
    that committed by the note regardless of the entry's term would apply (t, k+1),
    which N's appends then overwrite; the checkers see that."""
    config = SimConfig(nodes=3, net=NetConfig(min_delay=1, max_delay=1))
    cluster = Cluster(3, config, replay_hint=REPLAY.format(name="durable_note_older"))
    _until(cluster, lambda: len(cluster.leaders()) == 1, 300, "a first leader")
    a = cluster.leaders()[0]
    hosts = cluster.hosts.values()
    _until(cluster, lambda: all(h.sm.applied_index >= 2 for h in hosts), 100, "no-op applied")
    f, other = (h for h in hosts if h is not a)
    assert a.node is not None
    k, t = a.node.log.last_index(), a.node.term

    cluster.cut(a.nid, other.nid)
    old = cluster.propose(to=a)  # its appends leave at once; its fsync never happens
    assert old is not None and old.index == k + 1
    cluster.crash(a.nid)
    _until(cluster, lambda: f.disk.entry(k + 1) == old, 20, "F persisting A's entry")
    assert a.disk.last_index() == k

    cluster.heal()
    cluster.isolate(f.nid)
    cluster.restart(a.nid)
    _until(cluster, lambda: len(cluster.leaders()) == 1, 600, "N elected without F")
    n = cluster.leaders()[0]
    assert n.node is not None and n.node.term > t
    _until(cluster, lambda: n.node is not None and n.node.commit_index == k + 1, 100, "N's no-op")

    notes: list[LeaderDurable] = []

    def appends_to_f_held(msg: Message) -> bool:  # and N's notes to F noted on the way
        if msg.recipient == f.nid and type(msg) is LeaderDurable:
            notes.append(msg)
        return msg.recipient == f.nid and type(msg) is AppendEntries and bool(msg.entries)

    cluster.net.hold(appends_to_f_held)
    cluster.heal()
    _until(cluster, lambda: f.node is not None and f.node.leader_id == n.nid, 100, "F hears N")
    assert cluster.forward(to=f)
    _until(cluster, lambda: bool(notes), 50, "N's durable note reaching F")
    assert notes[0].index > k + 1 and f.disk.entry(k + 1) == old, "F holds the old entry"
    cluster.tick(5)
    assert f.node is not None and f.node.commit_index <= k, "F committed the old entry"
    cluster.net.release()
    _until(cluster, lambda: f.disk.entry(k + 1) == n.disk.entry(k + 1), 100, "F repaired")
    liveness_phase(cluster)
    cluster.full_check()


def test_a_follower_read_request_sent_before_a_leaders_read_never_confirms_it() -> None:
    """B asks leader A for a read index; the request is held on the way. A is cut off
    but keeps leading (no CheckQuorum); C or B is elected and commits past A's commit
    index; then a client reads on A. Now B's old request reaches A (it alone: A's own
    messages and every other one to it stay cut or held). It was sent before A's read
    began, so it proves nothing about A's leadership after that: a leader that counted
    it as the acknowledgement of the round carrying its read (the round shares the
    frame of the request's answer, consensus.read_index) would serve a read that misses
    the new leader's writes, and the checkers would see it. A never serves it."""
    config = SimConfig(nodes=3, check_quorum=False, net=NetConfig(min_delay=1, max_delay=1))
    cluster = Cluster(13, config, replay_hint=REPLAY.format(name="read_request_sent_before"))
    _until(cluster, lambda: len(cluster.leaders()) == 1, 300, "a first leader")
    a = cluster.leaders()[0]
    assert a.node is not None
    _until(cluster, lambda: a.node is not None and a.node.commit_index > 1, 100, "no-op commit")
    b, c = (h for h in cluster.hosts.values() if h is not a)
    early: list[Message] = []

    def b_request_to_a(msg: Message) -> bool:
        if msg.sender == b.nid and msg.recipient == a.nid and type(msg) is ReadIndexRequest:
            early.append(msg)
            return True
        return False

    cluster.net.hold(b_request_to_a)
    assert cluster.read(to=b)
    _until(cluster, lambda: bool(early), 20, "B's request held on its way to A")
    cluster.isolate(a.nid)
    _new_leader_commits_past(cluster, a)
    failed = cluster.counters.reads_failed
    assert cluster.read(to=a)
    term = a.node.term

    reached: list[Message] = []

    def all_to_a_but_the_request(msg: Message) -> bool:
        if msg.recipient != a.nid:
            return False
        if msg in early:
            reached.append(msg)
            return False
        return True

    cluster.net.release()  # B's request, and from now on only it, reaches A
    cluster.net.hold(all_to_a_but_the_request)
    cluster.heal()
    for sender, recipient in ((a.nid, b.nid), (a.nid, c.nid)):
        cluster.cut(sender, recipient)
    for _ in range(20):
        cluster.tick()
    assert reached == early, "B's request reached A"
    assert a.node.role.value == "leader" and a.node.term == term and a.reads, (
        "A still leads its term, its read unserved"
    )
    cluster.net.release()
    _deposed_with_its_read_failed(cluster, a, failed)
