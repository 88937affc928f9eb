"""snrt-run end to end on a small bundle: profile, then a controlled frame loop."""

import pytest

from snrt.lookup_table import LookupTable
from snrt.run_cli import main


def test_snrt_run_profiles_then_runs(tiny_family, tmp_path, capsys):
    tables = tmp_path / "tables"
    assert main([str(tiny_family["bundle"]), "--seconds", "2", "--fps", "50",
                 "--tables", str(tables), "--rank", "flops"]) == 0  # no top-1
    out = capsys.readouterr().out
    assert "profiling 23 variants" in out and "frames," in out
    t = LookupTable.load(next(tables.glob("*.json")))
    assert len(t.entries) == 23 and all(e.count >= 15 for e in t.entries)
    # second run reuses the table
    assert main([str(tiny_family["bundle"]), "--seconds", "1", "--fps", "50",
                 "--tables", str(tables), "--rank", "flops"]) == 0
    assert "using lookup table" in capsys.readouterr().out


def test_snrt_run_reports_missing_bundle(tmp_path, capsys):
    assert main([str(tmp_path / "nope.snrt"), "--seconds", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("snrt-run: error: ") and "no such bundle" in err


def test_default_bundle_samples_carry_their_labels():
    import snrt
    from snrt.bundle import Bundle
    from snrt.preprocess import label_from_name
    from snrt.run_cli import _samples

    b = Bundle.open(snrt.default_bundle(), verify="size")
    samples = _samples(b)
    assert len(samples) == 20
    assert sorted(lab for _, lab in samples) == sorted(b.labels * 2)
    assert samples[0][0].shape == tuple(b.manifest.input["shape"][1:])
    assert label_from_name("digit3_row1502", b.labels) == "3"
    assert label_from_name("cat_01", ["cat", "dog"]) == "cat"
    assert label_from_name("row1502", b.labels) is None


def test_a_long_frame_period_does_not_outlast_the_run(monkeypatch):
    """--fps 0.1 --seconds 1: the wait after the first frame ends with the run (1 s), not at
    the next frame's slot 10 s later."""
    from snrt import run_cli

    slept = []
    monkeypatch.setattr(run_cli.time, "perf_counter", lambda: 100.0)
    monkeypatch.setattr(run_cli.time, "sleep", slept.append)
    run_cli._wait_for_frame(100.0, 1, 10.0, 1.0)
    run_cli._wait_for_frame(100.0, 1, 0.5, 1.0)
    assert slept == [1.0, 0.5]


def test_snrt_run_refuses_bundles_that_read_frames_differently(tiny_family, tmp_path, capsys):
    assert main([str(tiny_family["bundle"]), "elastic", "--seconds", "1", "--fps", "50",
                 "--tables", str(tmp_path / "t"), "--rank", "flops"]) == 1
    assert "preprocess or label their inputs differently" in capsys.readouterr().err


@pytest.mark.slow
def test_snrt_run_one_front_over_stitches_and_subnets(tmp_path, capsys):
    """`snrt-run default elastic`: both bundles profiled into one table here (the shipped table
    is skipped so that the two are measured alike), one controller over both kinds."""
    tables = tmp_path / "tables"
    assert main(["default", "elastic", "--seconds", "2", "--fps", "100",
                 "--tables", str(tables)]) == 0
    out = capsys.readouterr().out
    assert "profiling 71 variants" in out and "profiling 16 variants" in out
    t = LookupTable.load(next(tables.glob("*.json")))
    assert {e.variant for e in t.entries} >= {"ti", "b", "w48d6", "w96d12"}
    front = out.split("Pareto variants: ", 1)[1].splitlines()[0].split(", ")
    assert front and all(v in {e.variant for e in t.entries} for v in front)
