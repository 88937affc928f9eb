"""What the snrt command-line tools share: argument types that check every value while the
command line is parsed (before any work or write), and one way to report a failure.

A bad value is a usage error, argparse style: the usage line, then `PROG: error: argument
--flag: ...` on one line, exit status 2. A failure while working is `PROG: error: ...` on one
line, exit status 1. Neither prints a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .paths import is_shipped

MAX_THREADS = 256
_DASH_VALUE = re.compile(r"-[\d.]")  # "-2", "-20%", "-.5", "-1e3": a value, never an option


class Parser(argparse.ArgumentParser):
    """argparse, except that a value starting with a minus sign and a digit is taken as the
    flag's value (`--sample -20%` is refused with a message about the value instead of
    "expected one argument")."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        joined: list[str] = []
        for tok in args:
            prev = joined[-1] if joined else ""
            action = self._option_string_actions.get(prev)
            if (action is not None and action.nargs is None and action.option_strings
                    and _DASH_VALUE.match(tok)):
                joined[-1] = f"{prev}={tok}"
            else:
                joined.append(tok)
        return super().parse_known_args(joined, namespace)


def fail(prog: str, error: BaseException | str) -> int:
    """Report a failure on one line of stderr; returns the exit status (1)."""
    msg = " ".join(str(error).split("\n"))
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return 1


def _show(s: str) -> str:
    """A value as typed when it is plain, else quoted (a message stays on one line)."""
    return s if s.isprintable() and s.strip() == s and s else repr(s)


def _int(s: str) -> int:
    try:
        return int(s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a whole number") from None


def int_range(lo: int, hi: int | None = None, what: str = "") -> Callable[[str], int]:
    """A whole number in [lo, hi]."""
    def parse(s: str) -> int:
        n = _int(s)
        if n < lo or (hi is not None and n > hi):
            want = f"{lo} to {hi}" if hi is not None else f"at least {lo}"
            raise argparse.ArgumentTypeError(f"{n}: give {what or 'a whole number'} {want}")
        return n
    return parse


def threads(s: str) -> int:
    return int_range(1, MAX_THREADS, "a thread count")(s)


def number(lo: float, hi: float, *, lo_open: bool = False, what: str = "a number"
           ) -> Callable[[str], float]:
    """A finite number in (lo, hi] (lo_open) or [lo, hi]."""
    def parse(s: str) -> float:
        try:
            x = float(s.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
        if not math.isfinite(x) or x < lo or (lo_open and x == lo) or x > hi:
            low = f"more than {lo:g}" if lo_open else f"at least {lo:g}"
            raise argparse.ArgumentTypeError(f"{_show(s)}: give {what}, {low} and at most "
                                             f"{hi:g}")
        return x
    return parse


def csv(item: Callable[[str], object]) -> Callable[[str], list]:
    """A comma list, each item checked by `item`; never empty."""
    def parse(s: str) -> list:
        items = [x.strip() for x in s.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{s!r}: give a comma list of values")
        return [item(x) for x in items]
    return parse


def choice(allowed: Sequence[str]) -> Callable[[str], str]:
    def parse(s: str) -> str:
        if s not in allowed:
            raise argparse.ArgumentTypeError(f"{s!r} is not one of: {', '.join(allowed)}")
        return s
    return parse


def sample_spec(s: str) -> str:
    """`--sample`: a percentage in (0, 100] ("20%") or a count >= 1 ("14")."""
    t = s.strip()
    if t.endswith("%"):
        try:
            p = float(t[:-1])
        except ValueError:
            p = math.nan
        if not (0 < p <= 100):
            raise argparse.ArgumentTypeError(f"{s!r}: give a percentage more than 0% and at "
                                             "most 100%, e.g. 20%")
        return t
    try:
        n = int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: give a percentage like 20% or a count like "
                                         "14") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{s!r}: give a count of at least 1 variant")
    return t


def _path(s: str) -> Path:
    if not s.strip() or "\0" in s:
        raise argparse.ArgumentTypeError(f"{s!r} is not a path")
    try:
        return Path(s).expanduser()
    except RuntimeError:  # "~name" of a user this system does not know
        raise argparse.ArgumentTypeError(f"{s!r}: no such user's home directory") from None


def _parent_ok(p: Path, s: str) -> None:
    for q in p.parents:
        if q.exists():
            if not q.is_dir():
                raise argparse.ArgumentTypeError(f"{_show(s)}: {q} is not a directory")
            if not os.access(q, os.W_OK):
                raise argparse.ArgumentTypeError(f"{_show(s)}: {q} is not writable")
            return


def out_dir(s: str) -> Path:
    """A directory to write into: existing or creatable, not a file, not a shipped location."""
    p = _path(s)
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{_show(s)} is not a directory")
    if is_shipped(p):
        raise argparse.ArgumentTypeError(
            f"{_show(s)} holds the tables shipped with snrt (read-only); write to the per-user "
            "data directory (the default, see snrt.paths) or to another directory")
    _parent_ok(p, s)
    return p


def out_file(suffix: str) -> Callable[[str], Path]:
    """A file to write: not a directory, a creatable parent, not in a shipped location."""
    def parse(s: str) -> Path:
        p = _path(s)
        if p.is_dir():
            raise argparse.ArgumentTypeError(f"{_show(s)} is a directory; give a {suffix} "
                                             "file path")
        if is_shipped(p):
            raise argparse.ArgumentTypeError(f"{_show(s)} is inside snrt's shipped files "
                                             "(read-only)")
        _parent_ok(p, s)
        return p
    return parse


def table_dir(s: str) -> Path:
    """`snrt-run --tables`: a directory to look tables up in (it may not exist yet)."""
    p = _path(s)
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{_show(s)} is not a directory (give the directory that "
                                         "holds <device-id>.json)")
    return p
