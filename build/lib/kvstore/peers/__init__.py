"""Links to the other nodes: one long-lived message stream per peer (link), the set of
them (transport), and snapshot transfer in checksummed, resumable chunks.
"""
