"""Names read from data (manifest shard files, clip ids, index files) joined to a root safely.

A name taken from data becomes a path only through `inside(root, name, where)`: it must be a
relative path of plain components below `root` (a local directory or an `s3://` prefix alike),
so no name in a manifest or a clip list reaches a file outside its data set. Refused, with one
line naming `where` (the file the name came from) and the name:

- empty names, empty components (`a//b`, a trailing `/`), `.` and `..` components;
- absolute names (`/etc/x`, `//host/x`), `~` at the start, backslashes (`..\\x` on Windows);
- a colon in the first component (`s3://other/x`, `file:/x`, `C:x`: URL schemes, drives);
- NUL and other control characters; names longer than `MAX_NAME` characters.

The check is lexical (no file system access), so it means the same for S3 keys and local
paths; symbolic links inside a local root are the owner's choice, not data, and are followed.
"""

from __future__ import annotations

from tnn.errors import DataError

MAX_NAME = 1024


def problem(name: object) -> str | None:
    """Why `name` is not a safe relative name under a root, or None when it is."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if not name:
        return "is empty"
    if len(name) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "holds a control character"
    if "\\" in name:
        return "holds a backslash"
    if name.startswith("/"):
        return "is absolute"
    if name.startswith("~"):
        return "starts with '~'"
    parts = name.split("/")
    if ":" in parts[0]:
        return "has a URL scheme or drive (':' in its first part)"
    if any(p in ("", ".", "..") for p in parts):
        return "has an empty, '.' or '..' part"
    return None


def check_name(name: object, where: str, what: str = "name") -> str:
    """`name` itself if it is a safe relative name, else `DataError`:
    `<where>: <what> '<name>' is absolute; names must stay inside the data set`."""
    why = problem(name)
    if why is not None:
        raise DataError(f"{where}: {what} {name!r} {why}; names must stay inside the data set")
    return name


def inside(root: str, name: object, where: str, what: str = "name") -> str:
    """`root/name` (local path or s3:// URI) after `check_name`; `where` names the file the
    name came from (a manifest, a clip list), `what` the kind of name ("shard file",
    "clip id"), for the one-line refusal."""
    return str(root).rstrip("/") + "/" + check_name(name, where, what)
