"""Majority arithmetic, kept apart so membership changes later touch one place."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from consensus.types import NodeId


def quorum_size(voters: int) -> int:
    return voters // 2 + 1


def committed_index(voters: Iterable[NodeId], match: Mapping[NodeId, int]) -> int:
    """The highest index stored on a majority of voters."""
    indices = sorted((match.get(voter, 0) for voter in voters), reverse=True)
    return indices[quorum_size(len(indices)) - 1]


def vote_result(voters: Iterable[NodeId], votes: Mapping[NodeId, bool]) -> bool | None:
    """True once a majority granted, False once a majority is out of reach, else None."""
    voter_list = list(voters)
    needed = quorum_size(len(voter_list))
    granted = sum(1 for voter in voter_list if votes.get(voter) is True)
    rejected = sum(1 for voter in voter_list if votes.get(voter) is False)
    if granted >= needed:
        return True
    if rejected > len(voter_list) - needed:
        return False
    return None


def has_quorum(voters: Iterable[NodeId], members: Iterable[NodeId]) -> bool:
    voter_set = set(voters)
    return len(voter_set.intersection(members)) >= quorum_size(len(voter_set))
