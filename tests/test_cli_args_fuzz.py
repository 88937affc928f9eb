"""Property test of the command lines (issue 14 items 7-8): any value of a numeric or list flag
either parses to a value that the code using it accepts, or is a usage error (exit 2) with a
one-line message naming the flag; never a traceback. Only parsing runs here (no work), so
each test takes a second or two."""

from __future__ import annotations

import contextlib
import io
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snrt
from snrt.bundle import Bundle
from snrt.controller import PolicyConfig
from snrt.lut_cli import parser as lut_parser
from snrt.monitor import SimulatedClock, SimulatedMonitor
from snrt.profile import Protocol, sample_variants
from snrt.profile_cli import _parser as profile_parser
from snrt.run_cli import parser as run_parser

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

numbers = st.one_of(
    st.integers(-(2 ** 70), 2 ** 70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.floats(-1e4, 1e4).map(lambda x: f"{x:.3g}"),
    st.sampled_from(["", " ", "-", "--", "%", "-%", "0", "-0", "1e400", "-1e-400", "0x10",
                     "1_000", "+3", " 7 ", "1,2", ",", "1,,2", "nan", "-inf", "2%", "-20%",
                     "500%", "100%", "0%", "0.001%", "1e2%", "--fps", "-h", "٣"]),
    st.text(max_size=10),
)
values = st.one_of(numbers, numbers.map(lambda s: f"{s}%"),
                   st.lists(numbers, min_size=1, max_size=3).map(",".join))


@pytest.fixture(scope="module")
def variants():
    return Bundle.open(snrt.default_bundle(), verify="size").variants


def _parse(parser, argv):
    """(namespace, None) or (None, stderr) after a usage error, which must exit 2."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return parser.parse_args(argv), None
        except SystemExit as e:
            assert e.code == 2, (argv, e.code, err.getvalue())
    return None, err.getvalue()


def _usage_error(text: str, prog: str, flag: str) -> None:
    assert "Traceback" not in text
    last = text.rstrip("\n").split("\n")[-1]
    assert re.match(rf"{prog}( [a-z]+)?: error: argument {flag}", last), text
    assert text.count(": error: ") == 1, text


@FUZZ
@given(flag=st.sampled_from(["--threads", "--fps", "--seconds"]), value=values)
def test_snrt_run_flags(flag, value):
    args, err = _parse(run_parser(), ["default", flag, value])
    if args is None:
        return _usage_error(err, "snrt-run", flag)
    assert isinstance(args.threads, int) and 1 <= args.threads <= 256
    assert math.isfinite(args.seconds) and args.seconds > 0
    secs = args.seconds  # what snrt-run builds from them accepts them
    SimulatedMonitor(clock=SimulatedClock(), battery_start_pct=100.0,
                     drain_pct_per_h=95.0 / secs * 3600,
                     power_saving=[(0.0, False), (secs * 70 / 95, True)])
    if args.fps is not None:
        PolicyConfig(target_fps=args.fps, headroom=0.8, min_dwell_s=1.0)
        assert 1.0 / args.fps <= 10.0  # a frame period time.sleep() takes


@FUZZ
@given(flag=st.sampled_from(["--threads", "--sample", "--runs", "--warmup", "--rounds",
                             "--min-seconds", "--max-seconds", "--backend", "--precision"]),
       value=values)
def test_snrt_profile_flags(flag, value, variants):
    args, err = _parse(profile_parser(), ["default", flag, value])
    if args is None:
        return _usage_error(err, "snrt-profile", flag)
    Protocol(args.runs, args.warmup, args.min_seconds, args.max_seconds)
    assert args.threads and all(isinstance(t, int) and 1 <= t <= 256 for t in args.threads)
    assert 0 <= args.rounds and set(args.backend) <= {"onnxruntime", "tflite"}
    if args.sample is not None:
        assert 1 <= len(sample_variants(variants, args.sample)) <= len(variants)


@FUZZ
@given(value=values)
def test_snrt_lut_show_threads(value):
    args, err = _parse(lut_parser(), ["show", "t.json", "--threads", value])
    if args is None:
        return _usage_error(err, "snrt-lut", "--threads")
    assert isinstance(args.threads, int) and 1 <= args.threads <= 256


paths = st.one_of(st.text(max_size=12), st.sampled_from(
    ["", " ", ".", "..", "/", "\0", "a\0b", "-x", "t.json", "p.png", "lookup_tables",
     "lookup_tables/x.json", "snrt", "snrt/data/x.png", "/proc/x", "/dev/null", "~"]))


@FUZZ
@given(prog=st.sampled_from(["snrt-run --tables", "snrt-profile --out", "snrt-profile --plot",
                             "snrt-lut plot --out", "snrt-lut merge --out"]), value=paths)
def test_path_flags(prog, value):
    """Path flags are checked without writing: a file for a directory, a directory for a file,
    a shipped location or an unwritable parent is a usage error."""
    from snrt.paths import is_shipped

    name, flag = prog.split(" ", 1)
    sub = flag.split()[0] if " " in flag else None
    parser = {"snrt-run": run_parser, "snrt-profile": profile_parser,
              "snrt-lut": lut_parser}[name]()
    argv = {"snrt-run": ["default"], "snrt-profile": ["default"]}.get(name) or [sub, "t.json"]
    flag = flag.split()[-1]
    args, err = _parse(parser, [*argv, flag, value])
    if args is None:
        return _usage_error(err, name, flag)
    got = getattr(args, {"--tables": "tables", "--out": "out", "--plot": "plot"}[flag])
    if flag != "--tables":
        assert not is_shipped(got)


def test_tilde_of_an_unknown_user_is_a_usage_error():
    """`~0` (found by test_path_flags): Path.expanduser raised RuntimeError, a traceback."""
    args, err = _parse(run_parser(), ["default", "--tables", "~no_such_user_snrt"])
    assert args is None and "no such user" in err
