"""The node's data directory: made if missing and proven writable before the node starts.

Kept out of kvstore.config (which clients import too): only a node has a data directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kvstore.config import ConfigError


def check_data_dir(path: Path) -> None:
    """Create the directory if needed and prove it takes a new file.

    Writing a probe file is the only check that also catches read-only mounts, ACLs and
    full quotas the same way the node would meet them later.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"data directory {path}: exists but is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"data directory {path}: exists but is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"data directory {path}: cannot create it: {exc.strerror}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"data directory {path}: not writable: {exc.strerror}") from None
