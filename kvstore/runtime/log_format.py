"""How a node's log lines look: human-readable text (the default) or one JSON object a
line (`kv serve --log-format json`, or `log_format = "json"` under [cluster]).

JSON lines are for log pipelines (Loki, Elasticsearch, `jq`): every record carries the
node id, and the Raft term and role at the moment it was written, so lines from several
nodes can be merged and read as one story without parsing the message text.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

from consensus import RaftNode
from kvstore.config import LOG_FORMATS

_TEXT = "%(asctime)s %(levelname)s {node} %(name)s: %(message)s"


class NodeContext(logging.Filter):
    """Adds `node_id`, `term` and `role` to every record passing the handler. The term and
    role are read from the core when the record is made (None before it exists)."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id
        self._node: RaftNode | None = None

    def follow(self, node: RaftNode) -> None:
        self._node = node

    def filter(self, record: logging.LogRecord) -> bool:
        node = self._node
        record.node_id = self.node_id
        record.term = node.term if node is not None else None
        record.role = node.role.value if node is not None else None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "node_id": getattr(record, "node_id", None),
            "term": getattr(record, "term", None),
            "role": getattr(record, "role", None),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(node_id: str, log_format: str, level: str) -> NodeContext:
    """Send every logger's records to stderr in the chosen format; returns the context
    filter so the server can point it at the core once the core exists."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    context = NodeContext(node_id)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(context)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT.format(node=node_id)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return context
