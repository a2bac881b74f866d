"""The node runtime: the asyncio driver of the pure Raft core (NodeRuntime), with
its parts (leadership, membership, snapshots), request bookkeeping, compaction, the
LevelDB log storage and backup files.
"""
