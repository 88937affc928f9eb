"""Where snrt keeps what a user's runs produce: the per-user data directory.

A run never writes into the repository or the installed package. Lookup tables that runs
measure (`snrt-run` profiling this device, `snrt-profile` by default) go to

    $SNRT_DATA_DIR                                   if set (tests point it at a tmp dir)
    Linux and other Unix: $XDG_DATA_HOME/snrt, else ~/.local/share/snrt
    macOS: ~/Library/Application Support/snrt
    Windows: %LOCALAPPDATA%\\snrt (else ~/AppData/Local/snrt)

in its `lookup_tables/` subdirectory. The tables shipped with snrt (the repository's
`lookup_tables/`) are read-only inputs: a table is looked up in the user's directory first,
then in the shipped one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP = "snrt"
ENV = "SNRT_DATA_DIR"
_PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_TABLES = _PACKAGE_DIR.parent / "lookup_tables"  # a checkout's tracked tables


def data_dir(platform: str | None = None, env: dict | None = None) -> Path:
    """The per-user data directory (not created here). `platform`/`env` default to this
    process's `sys.platform` and `os.environ` (parameters for tests)."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if env.get(ENV):
        return Path(env[ENV]).expanduser()
    home = Path(env.get("HOME") or env.get("USERPROFILE") or Path.home())
    if platform.startswith("win"):
        base = env.get("LOCALAPPDATA")
        return (Path(base) if base else home / "AppData" / "Local") / APP
    if platform == "darwin":
        return home / "Library" / "Application Support" / APP
    xdg = env.get("XDG_DATA_HOME")
    # the XDG spec: a relative $XDG_DATA_HOME is invalid and is ignored
    return (Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".local" / "share") / APP


def user_tables_dir() -> Path:
    """Where lookup tables measured by a user's runs are written."""
    return data_dir() / "lookup_tables"


def is_shipped(path: str | os.PathLike) -> bool:
    """Whether `path` lies in the shipped tables (a checkout's lookup_tables/) or inside the
    installed snrt package: places a run must not write to."""
    try:
        p = Path(path).expanduser().resolve()
    except RuntimeError:  # "~name" of an unknown user: not a shipped location
        return False
    return any(p == root or root in p.parents for root in (SHIPPED_TABLES, _PACKAGE_DIR))


def table_dirs(first: str | os.PathLike | None = None) -> list[Path]:
    """Directories a lookup table is looked up in, in order: `first` (a --tables/--out the
    user gave), the user's data directory, the shipped tables."""
    out: list[Path] = []
    for d in (first, user_tables_dir(), SHIPPED_TABLES):
        if d is not None and Path(d) not in out:
            out.append(Path(d))
    return out
