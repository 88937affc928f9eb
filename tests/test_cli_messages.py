"""Issue 14 item 8: a bad command line gets a one-line message and a non-zero exit, never a
traceback (usage errors exit 2 before any work, failures while working exit 1)."""

from __future__ import annotations

import re

import pytest

from snrt.lookup_table import Entry, LookupTable
from snrt.lut_cli import main as lut_main
from snrt.profile import main as profile_main
from snrt.run_cli import main as run_main

MAINS = {"snrt-run": run_main, "snrt-profile": profile_main, "snrt-lut": lut_main}

CASES = [  # (prog, argv with {tmp} and {table}, exit status, what stderr's message says)
    ("snrt-run", ["--seconds", "0"], 2, "argument --seconds: 0: give the seconds"),
    ("snrt-run", ["--seconds", "-5"], 2, "argument --seconds: -5: give the seconds"),
    ("snrt-run", ["--seconds", "nan"], 2, "argument --seconds: nan"),
    ("snrt-run", ["--fps", "0"], 2, "argument --fps: 0: give a frame rate"),
    ("snrt-run", ["--fps", "-10"], 2, "argument --fps: -10: give a frame rate"),
    ("snrt-run", ["--fps", "inf"], 2, "argument --fps: inf"),
    ("snrt-run", ["--threads", "0"], 2, "argument --threads: 0: give a thread count 1 to"),
    ("snrt-run", ["--tables", "{tmp}/fake.png"], 2, "fake.png is not a directory"),
    ("snrt-run", ["{tmp}/nope.snrt", "--seconds", "1"], 1, "no such bundle"),
    ("snrt-lut", ["plot", "{table}", "--out", "{tmp}"], 2, "is a directory; give a .png"),
    ("snrt-lut", ["show", "{table}", "--threads", "-1"], 2, "argument --threads: -1: give"),
    ("snrt-lut", ["show", "{table}", "--bundle", "nosuch"], 1,
     "--bundle nosuch: no entries in"),
    ("snrt-lut", ["show", "{table}", "--backend", "tensorrt"], 1, "they hold: fam@x"),
    ("snrt-lut", ["show", "{tmp}/missing.json"], 1, "no such lookup table"),
    ("snrt-lut", ["merge", "{table}", "--out", "{table}"], 2, "is not a directory"),
    ("snrt-profile", ["default", "--sample", "-20%"], 2,
     "argument --sample: '-20%': give a percentage more than 0% and at most 100%"),
    ("snrt-profile", ["default", "--sample", "500%"], 2, "at most 100%"),
    ("snrt-profile", ["default", "--sample", "0"], 2, "a count of at least 1"),
    ("snrt-profile", ["default", "--backend", "tensorrt"], 2,
     "'tensorrt' is not one of: onnxruntime, tflite"),
    ("snrt-profile", ["default", "--plot", "{tmp}"], 2, "is a directory; give a .png"),
]


@pytest.mark.parametrize(("prog", "argv", "code", "message"), CASES,
                         ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES])
def test_bad_command_lines_get_a_one_line_message(prog, argv, code, message, tmp_path, capsys):
    t = LookupTable.new()
    t.put(Entry("fam@x", "a", 0, "onnxruntime", "fp32", 1, 2.0, 2.0, accuracy=70.0))
    table = t.save(tmp_path / "t.json")
    (tmp_path / "fake.png").write_bytes(b"\x89PNG not really")
    argv = [a.format(tmp=tmp_path, table=table) for a in argv]
    try:
        got = MAINS[prog](argv)
    except SystemExit as e:
        got = e.code
    assert got == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # "snrt-lut plot: error: ..." from a subcommand's usage error
    errors = [ln for ln in err.splitlines() if re.match(rf"{prog}( [a-z]+)?: error: ", ln)]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0])  # one line, the last
    assert message in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.png", "t.json"]  # no writes
