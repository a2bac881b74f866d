"""The order in which a leader sends a lone write's messages (concurrency 1), so that
the processes on the write's path get the cores first. On a machine with fewer cores
than busy processes (the benchmark's: three nodes and the generator on two), every
message wakes a process, which takes a core from whoever is still working on the write.
Holding a message back is only a delay, which Raft tolerates from any network.

A forwarded lone write (`OriginFirst`): a write that landed on a follower commits there
as soon as the follower's own copy and the leader's are durable (consensus.durable_note):
the other follower's copy is not on its path. Yet the leader sent the entry to both at
once, and the other follower's wake-up came exactly while the leader and the origin
were about to sync. So when an idle leader sends the appends of a forwarded proposal,
the origin's messages leave now and the others are held until the leader's save of that
entry ends (or before any other message, see `before`). The core already counted the
append as sent (flow control, the durable note), and the held message leaves before any
later one to the same peer, so the link's order holds. Only while the leader's disk is
quick (the save is then inline and short); on a slow disk the other follower's copy may
make a majority with the origin's before the leader's own (kvstore.runtime.persist).

A lone write's commit (`answer_first`): once a follower's acknowledgement commits the
one entry an idle leader waits for, the leader applies it, which answers its client,
and only then tells the followers the commit index. They need it only to apply (a
follower's own client commits on the durable note); sent first, each announcement
woke a follower that took a core while the leader still had the answer to write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from consensus import Message, Ready, Role
from consensus.messages import ProposeResponse
from kvstore.runtime.persist import FAST_SAVES, Persister


def answer_first(rd: Ready, role: Role) -> bool:
    """Whether to apply this Ready before sending any of its messages: a leader's that
    saves nothing and commits one entry (see the module docstring)."""
    return len(rd.committed) == 1 and not rd.must_sync and role is Role.LEADER


class OriginFirst:
    """The messages held back from an idle leader's early send (see the module docstring)."""

    def __init__(self, send: Callable[[Sequence[Message]], None], persister: Persister) -> None:
        self._send = send
        self._persister = persister
        self._held: list[Message] = []

    def send_early(self, early: Sequence[Message], idle: bool) -> None:
        """Send `early` now; when the leader was `idle` (no Ready in hand) and its disk is
        quick, hold the messages to others than the origin of a forwarded proposal among
        them until `release`."""
        origin = next((m.recipient for m in early if type(m) is ProposeResponse), None)
        if origin is None or not idle or self._persister.quick_saves < FAST_SAVES:
            self.release()
            self._send(early)
            return
        self._send([m for m in early if m.recipient == origin])
        self._held.extend(m for m in early if m.recipient != origin)

    def before(self, rd: Ready) -> None:
        """Before a Ready is handled: hold on only over the save of a lone entry (that of
        the forwarded proposal) with nothing sent before it."""
        if rd.early_messages or len(rd.entries) != 1:
            self.release()

    def release(self) -> None:
        """Send what was held: after the leader's save, and before any other message."""
        if self._held:
            held, self._held = self._held, []
            self._send(held)
