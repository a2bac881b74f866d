"""The HTTP surfaces of a node: the client API (kv), members and backup (members),
status (status), assembled by `app`; and the peer API (peer) that other nodes call.
"""
