"""`jaxdistill reproduce hinton2015 --scale smoke` runs every row and writes both table files."""

import json

import pytest

from jaxdistill import cli


@pytest.mark.slow
def test_hinton2015_smoke_writes_the_table(tmp_path, data_dir, capsys):
    cli.main(["reproduce", "hinton2015", "--scale", "smoke", "--seeds", "2", "--data_dir", data_dir,
              "--out", str(tmp_path / "results"), "--workdir", str(tmp_path / "runs")])
    with open(tmp_path / "results" / "hinton2015_smoke.json") as f:
        table = json.load(f)
    assert table["name"] == "hinton2015" and table["scale"] == "smoke"
    assert table["seeds"] == [0, 1] and table["wall_s"] > 0 and table["device"]
    assert [row["setting"] for row in table["rows"]] == [
        "teacher", "student_scratch", "student_kd", "student_scratch_10pct", "student_kd_10pct"]
    for row in table["rows"]:
        assert len(row["seeds"]) == 2 and 0.0 <= row["value"] <= 1.0
        assert (row["paper"] is None) == row["setting"].endswith("_10pct")
    assert (tmp_path / "runs" / "seed1" / "student_kd" / "checkpoints").is_dir()
    markdown = (tmp_path / "results" / "hinton2015_smoke.md").read_text()
    assert "| student_kd |" in markdown and "Distilled minus scratch" in markdown
    assert "student_kd" in capsys.readouterr().out
    assert (tmp_path / "results" / "hinton2015.md").read_text() == markdown
