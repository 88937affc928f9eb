"""Issue 14 item 13: what the README says about the API and the data directory is what the code
does."""

from __future__ import annotations

import re
from pathlib import Path

import snrt
from snrt.paths import data_dir

README = (Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")


def test_classify_comment_says_what_classify_returns():
    line = next(ln for ln in README.splitlines() if "rt.classify(img, k=3)" in ln)
    assert "variant" not in line and "[(label, probability), ...]" in line
    with snrt.Runtime(snrt.default_bundle()) as rt:
        got = rt.classify(str(Path(snrt.default_bundle()).parent / "samples"
                              / "digit3_row1544.png"), k=3)
    assert isinstance(got, list) and len(got) == 3
    assert all(isinstance(lab, str) and isinstance(p, float) for lab, p in got)


def test_readme_names_the_data_directory_of_each_platform():
    home = {"HOME": "/h"}
    said = re.search(r"Where runs write:(.+?)\n\n", README, re.S).group(1)
    assert "$SNRT_DATA_DIR" in said and "$XDG_DATA_HOME/snrt" in said
    assert str(data_dir("linux", home)).replace("/h", "~") in said
    assert str(data_dir("darwin", home)).replace("/h", "~") in said
    assert str(data_dir("win32", {"LOCALAPPDATA": "%LOCALAPPDATA%"})).replace("/", "\\") in said
