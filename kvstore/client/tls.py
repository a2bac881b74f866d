"""TLS for the client side (stdlib `ssl` only, so the client install stays small).

Verification is never switched off: without a CA file the system's CAs are used, so a
cluster certificate from `kv certs init` needs `ca_file` (`--cacert`, `KV_CACERT`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from kvstore.client.errors import TLSError


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """How a client trusts https nodes: `AsyncKV(endpoints, tls=ClientTLS(ca_file=...))`.
    `ca_file`: the CA that signed the nodes' certificates (else the system's CAs);
    `cert_file`/`key_file`: a client certificate, for clusters that require one."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def context(self) -> ssl.SSLContext:
        """A verifying context; TLSError naming the files when one cannot be loaded."""
        if self.key_file and not self.cert_file:
            raise TLSError("a client key needs its certificate (cert_file / --cert)")
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(f for f in (self.ca_file, self.cert_file, self.key_file) if f)
            raise TLSError(f"cannot load TLS files ({files}): {exc}") from None
        return ctx
