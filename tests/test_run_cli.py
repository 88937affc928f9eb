"""snrt-run end to end on a small bundle: profile, then a controlled frame loop."""

from snrt.lookup_table import LookupTable
from snrt.run_cli import main


def test_snrt_run_profiles_then_runs(tiny_family, tmp_path, capsys):
    tables = tmp_path / "tables"
    assert main([str(tiny_family["bundle"]), "--seconds", "2", "--fps", "50",
                 "--tables", str(tables)]) == 0
    out = capsys.readouterr().out
    assert "profiling 23 variants" in out and "frames," in out
    t = LookupTable.load(next(tables.glob("*.json")))
    assert len(t.entries) == 23 and all(e.count >= 15 for e in t.entries)
    # second run reuses the table
    assert main([str(tiny_family["bundle"]), "--seconds", "1", "--fps", "50",
                 "--tables", str(tables)]) == 0
    assert "using lookup table" in capsys.readouterr().out


def test_snrt_run_reports_missing_bundle(tmp_path, caplog):
    assert main([str(tmp_path / "nope.snrt"), "--seconds", "1"]) == 1
    assert "no such bundle" in caplog.text
