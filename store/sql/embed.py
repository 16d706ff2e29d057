#!/usr/bin/env python3
"""Embed a .sql file as a C string (build step of store/meson.build):
embed.py IN.sql OUT.c defines `const char pg_schema_sql[]`. The SQL stays
one readable file (psql -f works on it for review); the binary needs no
data file at run time."""
import sys

src, out = sys.argv[1], sys.argv[2]
text = open(src, encoding="utf-8").read()
lines = ["/* Generated from store/sql/schema.sql by store/sql/embed.py. */",
         "const char pg_schema_sql[] ="]
for line in text.splitlines(keepends=True):
    esc = line.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    lines.append(f'\t"{esc}"')
lines[-1] += ";"
open(out, "w", encoding="utf-8").write("\n".join(lines) + "\n")
