"""
A bulk import through one transaction: all rows or none.

    .venv/bin/python examples/bulk_import.py --url http://127.0.0.1:8080 --prefix users/ users.csv
    .venv/bin/python examples/bulk_import.py --prefix users/ --only-new users.csv

Reads a CSV file with a header row C{key,value} and writes each row as
C{<prefix><key>} = C{value} (stored as C{text/plain; charset=utf-8}),
all in one multi-request transaction:

    POST /v1/txn                          -> the transaction's id
    PUT  /v1/txn/<id>/kv/<key>            one per row, staged, invisible
    POST /v1/txn/<id>/commit              all rows at once, durably

Nobody sees a half-imported file: until the commit no row is visible, and
the commit applies every row or none. With C{--only-new} each row is staged
with C{If-None-Match: *}: if any of the keys already exists when the
transaction commits, the commit is refused (409) and nothing is imported.
On any error the transaction is aborted.

Output and exit status: C{imported N keys at revision R} (0); C{nothing
imported: ...} naming the conflicting keys (4); a file that cannot be read
or is not such a CSV, one line on stderr (2).

(The scripts need kvtwist and treq: run them with the project's
C{.venv/bin/python}, which C{./run.sh} makes, or any Python that has
kvtwist installed.)
"""

from __future__ import annotations

import argparse
import csv
import sys
from typing import Any, Dict, List, Tuple

import treq
from twisted.internet.defer import Deferred
from twisted.internet.task import react

from kvtwist import client

EXIT_CONFLICT = 4
EXIT_BAD_INPUT = 2


def read_rows(path: str) -> List[Tuple[str, str]]:
    """
    The C{(key, value)} rows of a CSV file with a C{key,value} header.

    @raise ValueError: for a file that cannot be read, is not UTF-8, lacks
        those columns, or has an empty key.
    """
    try:
        return _read_rows(path)
    except OSError as e:
        raise ValueError("cannot read %s: %s" % (path, e.strerror or e))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError("%s is not a UTF-8 CSV file: %s" % (path, e))


def _read_rows(path: str) -> List[Tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"key", "value"} <= set(reader.fieldnames):
            raise ValueError(
                "%s needs a header row with key and value columns (it has: %s)"
                % (path, ",".join(reader.fieldnames or []) or "nothing")
            )
        rows = []
        for number, row in enumerate(reader, 2):
            if not row["key"]:
                raise ValueError("%s line %d: empty key" % (path, number))
            rows.append((row["key"], row["value"] or ""))
    return rows


async def import_rows(
    http: Any, url: str, rows: List[Tuple[str, str]], prefix: str = "", only_new: bool = False
) -> Dict[str, Any]:
    """
    Write every row in one transaction.

    @return: the commit's C{{"revision", "ops"}}.
    @raise client.ConflictError: if C{only_new} and a key exists (or
        another commit changed a key while we staged); nothing was written.
    """
    txn = await client.begin(http, url)
    try:
        for key, value in rows:
            await txn.put(prefix + key, value.encode("utf-8"),
                          content_type="text/plain; charset=utf-8", if_none_match=only_new)
        return await txn.commit()
    except BaseException:
        if not txn.finished:
            try:
                await txn.abort()
            except Exception:
                pass  # it expires on the server anyway; the first error matters
        raise


async def run(
    http: Any, url: str, path: str, prefix: str, only_new: bool, out: Any, err: Any = None
) -> int:
    try:
        rows = read_rows(path)
    except ValueError as e:
        (err or sys.stderr).write("bulk_import: %s\n" % (e,))
        return EXIT_BAD_INPUT
    try:
        result = await import_rows(http, url, rows, prefix, only_new)
    except client.ConflictError as e:
        keys = sorted({c.get("key") for c in e.conflicts if c.get("key")})
        out.write("nothing imported: %s exist(s) already or changed\n" % (", ".join(keys),))
        return EXIT_CONFLICT
    out.write("imported %d keys at revision %d\n" % (result["ops"], result["revision"]))
    return 0


def main(reactor: Any, *argv: str, http: Any = None, out: Any = None) -> Deferred:
    parser = argparse.ArgumentParser(description="Import a CSV file in one transaction.")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="kvcache base URL")
    parser.add_argument("--prefix", default="", help="put before every key")
    parser.add_argument("--only-new", action="store_true",
                        help="import nothing if any key already exists")
    parser.add_argument("file", help="a CSV file with a key,value header")
    args = parser.parse_args(argv)

    def exit_with(code: int) -> None:
        if code:
            raise SystemExit(code)

    d = Deferred.fromCoroutine(
        run(http or treq, args.url, args.file, args.prefix, args.only_new, out or sys.stdout)
    )
    return d.addCallback(exit_with)


if __name__ == "__main__":
    react(main, sys.argv[1:])
