"""Issue 14 item 7: runs write lookup tables to the per-user data directory, never into the
shipped lookup_tables/; every argument is checked before any work or write; a damaged table's
error names the file, the entry and the command that repairs it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from snrt.device import describe_device
from snrt.lookup_table import LookupTable
from snrt.lut_cli import main as lut_main
from snrt.paths import SHIPPED_TABLES, data_dir, is_shipped, user_tables_dir
from snrt.profile import main as profile_main
from snrt.run_cli import main as run_main

REPO = Path(__file__).resolve().parents[1]


def _hashes(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def test_data_dir_follows_each_platform_convention():
    home = {"HOME": "/home/u"}
    assert data_dir("linux", home) == Path("/home/u/.local/share/snrt")
    assert data_dir("linux", {**home, "XDG_DATA_HOME": "/x/data"}) == Path("/x/data/snrt")
    # a relative XDG_DATA_HOME is invalid (XDG spec) and ignored
    assert data_dir("linux", {**home, "XDG_DATA_HOME": "rel"}) == Path(
        "/home/u/.local/share/snrt")
    assert data_dir("darwin", home) == Path("/home/u/Library/Application Support/snrt")
    assert data_dir("win32", {**home, "LOCALAPPDATA": "C:/Users/u/AppData/Local"}) == Path(
        "C:/Users/u/AppData/Local/snrt")
    assert data_dir("win32", {"USERPROFILE": "C:/Users/u"}) == Path(
        "C:/Users/u/AppData/Local/snrt")
    for plat in ("linux", "darwin", "win32"):
        assert data_dir(plat, {**home, "SNRT_DATA_DIR": "/tmp/d"}) == Path("/tmp/d")
    assert is_shipped(SHIPPED_TABLES / "x.json") and is_shipped(REPO / "snrt" / "data")
    assert not is_shipped(user_tables_dir())


def test_snrt_run_writes_its_profile_to_the_user_dir_not_the_shipped_tables(
        tiny_family, tmp_path, monkeypatch, capsys):
    """From the repository root, with the old default (--tables lookup_tables) given
    explicitly: the shipped tables are read, not written; the profile lands in
    $SNRT_DATA_DIR, and the next run (no --tables) uses it."""
    monkeypatch.setenv("SNRT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(REPO)
    before = _hashes(SHIPPED_TABLES)
    bundle = str(tiny_family["bundle"])
    assert run_main([bundle, "--seconds", "1", "--fps", "50", "--tables", "lookup_tables",
                     "--rank", "flops"]) == 0  # tiny: no top-1
    mine = tmp_path / "data" / "lookup_tables" / f"{describe_device().id}.json"
    assert "holds the shipped tables (read-only)" in capsys.readouterr().out
    assert len(LookupTable.load(mine).entries) == 23
    assert run_main([bundle, "--seconds", "1", "--fps", "50", "--rank", "flops"]) == 0
    assert f"using lookup table {mine}" in capsys.readouterr().out
    for bad in (["--threads", "0"], ["--threads", "-2"], ["--seconds", "0"]):
        with pytest.raises(SystemExit) as exc:
            run_main([bundle, *bad])
        assert exc.value.code == 2
    assert _hashes(SHIPPED_TABLES) == before
    assert sorted(p.name for p in (tmp_path / "data").rglob("*") if p.is_file()) == [
        mine.name]


def test_snrt_run_reads_the_shipped_table_from_anywhere(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no ./lookup_tables here; the user dir is empty
    before = _hashes(SHIPPED_TABLES)
    shipped = SHIPPED_TABLES / f"{describe_device().id}.json"
    if not shipped.is_file():
        pytest.skip("no shipped table for this device")
    assert run_main(["--seconds", "0.5", "--fps", "50"]) == 0
    assert f"using lookup table {shipped}" in capsys.readouterr().out
    assert _hashes(SHIPPED_TABLES) == before
    assert not any(user_tables_dir().parent.rglob("*.json"))


def test_a_bad_table_names_the_file_the_entry_and_the_repair(tmp_path, capsys):
    shipped = SHIPPED_TABLES / f"{describe_device().id}.json"
    if not shipped.is_file():
        pytest.skip("no shipped table for this device")
    d = json.loads(shipped.read_text())
    n = len(d["entries"])
    d["entries"].append({**d["entries"][0], "threads": 0})  # what --threads 0 used to write
    mine = user_tables_dir() / shipped.name
    mine.parent.mkdir(parents=True)
    mine.write_text(json.dumps(d))
    assert run_main(["--seconds", "0.5", "--fps", "50"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    ti = d["entries"][0]["variant"]
    assert (f"snrt-run: error: {mine}: entry {n} ({ti} onnxruntime/fp32/threads=0): threads "
            "must be a positive integer, got 0") in err
    assert f"`snrt-lut repair {mine}`" in err
    assert lut_main(["repair", str(mine)]) == 0
    assert len(LookupTable.load(mine).entries) == n
    assert run_main(["--seconds", "0.5", "--fps", "50"]) == 0
    assert f"using lookup table {mine}" in capsys.readouterr().out


def test_snrt_profile_checks_every_argument_before_any_work(tiny_family, tmp_path, capsys):
    out = tmp_path / "out"
    bundle = str(tiny_family["bundle"])
    before = _hashes(SHIPPED_TABLES)
    for bad, msg in ((["--backend", "tensorrt"],
                      "argument --backend: 'tensorrt' is not one of: onnxruntime, tflite"),
                     (["--backend", "onnxruntime,tensorrt"], "'tensorrt' is not one of"),
                     (["--threads", "0"], "argument --threads: 0: give a thread count 1 to"),
                     (["--threads", "-2"], "argument --threads: -2: give a thread count"),
                     (["--threads", "1,0"], "argument --threads: 0"),
                     (["--precision", "fp8"], "'fp8' is not one of: fp32, fp16, int8"),
                     (["--runs", "0"], "argument --runs"),
                     (["--max-seconds", "0"], "argument --max-seconds"),
                     (["--out", str(SHIPPED_TABLES)], "shipped with snrt (read-only)")):
        argv = [bundle, "--variants", "ti", "--in-process", "--quiet", "--out", str(out), *bad]
        with pytest.raises(SystemExit) as exc:
            profile_main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith("snrt-profile: error: ") and msg in err
        assert not out.exists()
    # the default output is the user's data directory
    assert profile_main([bundle, "--variants", "ti", "--runs", "1", "--min-seconds", "0",
                         "--in-process", "--quiet"]) == 0
    mine = user_tables_dir() / f"{describe_device().id}.json"
    assert [e.variant for e in LookupTable.load(mine).entries] == ["ti"]
    assert _hashes(SHIPPED_TABLES) == before


def test_snrt_profile_exits_1_when_measurements_fail(tiny_family, tmp_path, capsys):
    """The tiny bundle has no TFLite graphs: every measurement fails, and so does the
    command (it used to print "failed" and exit 0)."""
    out = tmp_path / "t.json"
    assert profile_main([str(tiny_family["bundle"]), "--backend", "tflite", "--variants", "ti",
                         "--runs", "1", "--min-seconds", "0", "--in-process", "--quiet",
                         "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "snrt-profile: error: 1 of 1 measurements failed (ti: " in err
    assert LookupTable.load(out).entries[0].error


def test_controller_auto_reads_the_user_table_before_the_shipped_one(tmp_path, monkeypatch):
    import snrt
    from snrt.controller import Controller
    from snrt.monitor import SimulatedMonitor

    monkeypatch.chdir(tmp_path)
    shipped = SHIPPED_TABLES / f"{describe_device().id}.json"
    if not shipped.is_file():
        pytest.skip("no shipped table for this device")
    t = LookupTable.load(shipped)
    with snrt.Runtime(snrt.default_bundle()) as rt:
        ctl = Controller.auto(rt, monitor=SimulatedMonitor())
        ours = {e.variant: e.p50_ms for e in t.select(backend="onnxruntime", threads=1)}
        assert ctl.base_ms == ours  # the shipped table
        for e in t.entries:
            e.p50_ms *= 10
        t.save(user_tables_dir() / shipped.name)
        ctl = Controller.auto(rt, monitor=SimulatedMonitor())
        assert ctl.base_ms == {k: 10 * v for k, v in ours.items()}  # the user's, first


def test_the_profiler_refuses_to_write_a_shipped_table():
    import snrt
    from snrt.errors import SnrtError
    from snrt.profile import Profiler

    before = _hashes(SHIPPED_TABLES)
    for p in (SHIPPED_TABLES / f"{describe_device().id}.json", REPO / "snrt" / "t.json"):
        with pytest.raises(SnrtError, match="shipped with snrt are read-only"):
            Profiler(snrt.default_bundle(), p)
    assert _hashes(SHIPPED_TABLES) == before


def test_a_table_the_loader_rejects_is_never_written(tmp_path):
    from snrt.lookup_table import Entry, LookupTableError

    t = LookupTable.new()
    t.put(Entry("f@x", "a", 0, "onnxruntime", "fp32", 1, 2.0, 2.0))
    t.save(tmp_path / "t.json")
    t.put(Entry("f@x", "a", 0, "onnxruntime", "fp32", 0, 2.0, 2.0))  # threads=0
    with pytest.raises(LookupTableError, match=r"t.json: not written, entry 1 \(a onnxruntime/"
                                               r"fp32/threads=0\): threads must be a positive"):
        t.save(tmp_path / "t.json")
    assert len(LookupTable.load(tmp_path / "t.json").entries) == 1
