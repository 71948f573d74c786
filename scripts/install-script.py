#!/usr/bin/env python3
"""scripts/install-script.py FROM TO: write saga--TO.sql, the fresh-install script of version TO,
as saga--FROM.sql followed by the body of the upgrade script saga--FROM--TO.sql.

The fresh script must create exactly what installing FROM and updating to TO creates, and
sql/01_upgrade.sql checks that by comparing both catalogues.  Generating it keeps the two from
drifting by hand.  The warning block that ends every install script (no worker serves the
database) is moved to the end, so that it runs once, after everything exists.
Run it from the repository root after every change of saga--FROM--TO.sql and commit both.
"""
import re
import sys

WARN_START = "/*\n * Installed where no background worker will serve it"


def body(text, name):
    # drop the leading comment line and the \echo guard of a script
    m = re.match(r"/\*[^\n]*\*/\n\n\\echo [^\n]*\\quit\n", text)
    if not m:
        sys.exit(f"{name}: does not start with its title comment and the \\echo guard")
    return text[m.end():]


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: scripts/install-script.py FROM TO")
    old, new = sys.argv[1:]
    base = open(f"saga--{old}.sql").read()
    upgrade = open(f"saga--{old}--{new}.sql").read()
    cut = base.rfind(WARN_START)
    if cut < 0:
        sys.exit(f"saga--{old}.sql: the closing worker warning is missing")
    warn = base[cut:]
    base_body = body(base[:cut], f"saga--{old}.sql").rstrip("\n") + "\n\n"
    out = (f"/* saga--{new}.sql: sagas inside PostgreSQL */\n\n"
           '\\echo Use "CREATE EXTENSION saga" to load this file. \\quit\n'
           + base_body
           + f"/* ---- from saga--{old}--{new}.sql ---- */\n"
           + body(upgrade, f"saga--{old}--{new}.sql").rstrip("\n") + "\n\n" + warn)
    with open(f"saga--{new}.sql", "w") as f:
        f.write(out)


main()
