"""Runs SQL in ClickHouse in-process (chdb-core) for the Rust tests (testkit `Chdb`).

One JSON object per line on stdin: {"sql": "..."}; one per line on stdout:
{"ok": true, "out": "<TabSeparated text>"} or {"ok": false, "error": "..."}.
The first line out is {"ok": true, "version": "<ClickHouse version>"}. The session's data lives
in the directory given as the first argument; a second argument names a server config file (for
`remote_servers`); stdin closing ends the process.
"""
import json
import sys

from chdb import session


def main() -> None:
    path = sys.argv[1]
    if len(sys.argv) > 2:
        path += "?config-file=" + sys.argv[2]
    s = session.Session(path)
    # An ALTER ... DELETE returns once the rows are gone, as the server's deletes wait for.
    s.query("SET mutations_sync = 2")
    version = str(s.query("SELECT version()", "TSV")).strip()
    print(json.dumps({"ok": True, "version": version}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        sql = json.loads(line)["sql"]
        try:
            out = s.query(sql, "TSV")
            reply = {"ok": True, "out": out.bytes().decode("utf-8", "replace") if out is not None else ""}
        except Exception as e:  # the statement's error goes back to the caller, who names it
            reply = {"ok": False, "error": str(e)}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
