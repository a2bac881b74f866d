"""`kv txn`: run a transaction written as JSON (the body of POST /v1/txn).

The file (or standard input with `-` or no argument) holds
`{"compare": [...], "success": [...], "failure": [...]}` as the README's API section
describes; values may be given as UTF-8 `text` or base64 `value`. Exit 0 when the
compares held (the success branch ran), 1 when they did not (the failure branch ran),
and the usual codes otherwise (kvstore.cli.client_commands).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from kvstore.cli.client_commands import (
    EXIT_NO,
    EXIT_USAGE,
    endpoint_options,
    fail,
    kv_json,
    run_client,
)
from kvstore.client import Deleted, PutResult, RangePage, TxnResponse


def _result_json(result: PutResult | Deleted | RangePage) -> dict[str, Any]:
    if isinstance(result, PutResult):
        return {"put": {"revision": result.revision, "version": result.version}}
    if isinstance(result, Deleted):
        return {"delete_range": {"revision": result.revision, "deleted": result.deleted}}
    kvs = [kv_json(item) for item in result.kvs]
    return {"range": {"revision": result.revision, "count": result.count, "kvs": kvs}}


def _result_line(result: PutResult | Deleted | RangePage) -> str:
    if isinstance(result, PutResult):
        return f"put: revision {result.revision} version {result.version}"
    if isinstance(result, Deleted):
        return f"delete: {result.deleted} deleted"
    lines = [f"range: {result.count} keys"]
    lines += [f"{kv.key}\t{kv.value.decode('utf-8', 'backslashreplace')}" for kv in result.kvs]
    return "\n".join(lines)


def load_document(source: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(EXIT_USAGE, f"cannot read {source}: {exc}")
    try:
        document = json.loads(text)
    except ValueError as exc:
        fail(EXIT_USAGE, f"{source} is not JSON: {exc}")
    if not isinstance(document, dict):
        fail(EXIT_USAGE, f"{source}: a transaction is a JSON object")
    return document


@click.command("txn")
@click.argument("file", default="-")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@endpoint_options
def txn_command(file: str, as_json: bool, **params: Any) -> None:
    """Run the transaction in FILE (JSON; `-` or nothing: standard input) atomically.
    Prints which branch ran and each operation's result; exit 1 if the compares failed."""
    document = load_document(file)
    answer: TxnResponse = run_client(params, lambda kv: kv.run_txn(document))
    if as_json:
        results = [_result_json(r) for r in answer.results]
        doc = {"succeeded": answer.succeeded, "revision": answer.revision, "results": results}
        click.echo(json.dumps(doc))
    else:
        branch = "SUCCESS" if answer.succeeded else "FAILURE"
        click.echo(f"{branch} revision {answer.revision}")
        for result in answer.results:
            click.echo(_result_line(result))
    if not answer.succeeded:
        raise SystemExit(EXIT_NO)


TXN_COMMANDS: list[click.Command] = [txn_command]
