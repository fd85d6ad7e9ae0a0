"""Small helpers shared by several test files."""

from pathlib import Path


def snapshot(root: Path) -> dict:
    """Every entry under root with its bytes and mtime: any write would change it."""
    entries = {".": root.stat().st_mtime_ns}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        entries[p.relative_to(root).as_posix()] = (st.st_mtime_ns, st.st_size,
                                                   p.read_bytes() if p.is_file() else None)
    return entries
