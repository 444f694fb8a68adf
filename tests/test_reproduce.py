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


def _smoke_table(name, tmp_path, data_dir, seeds):
    cli.main(["reproduce", name, "--scale", "smoke", "--seeds", str(seeds), "--data_dir", data_dir,
              "--out", str(tmp_path / "results"), "--workdir", str(tmp_path / "runs")])
    with open(tmp_path / "results" / f"{name}_smoke.json") as f:
        return json.load(f)


@pytest.mark.slow
def test_minilm2020_smoke_writes_the_table(tmp_path, data_dir):
    table = _smoke_table("minilm2020", tmp_path, data_dir, seeds=1)
    rows = {row["setting"]: row for row in table["rows"]}
    assert list(rows) == ["teacher"] + [
        f"student_{depth}L_{name}" for depth in (3, 2)
        for name in ("layerdrop", "embedding_kd", "minilm_kd", "minilm_plus_embedding")]
    # The teacher scored against itself is exact; students are faster and agree less.
    assert rows["teacher"]["value"] == pytest.approx(1.0)
    assert rows["teacher"]["extra"]["nn_agreement"]["value"] == 1.0
    for name, row in rows.items():
        if name != "teacher":
            assert 0.0 < row["value"] < 1.0
            assert row["extra"]["speed-up"]["value"] > 1.0
    markdown = (tmp_path / "results" / "minilm2020_smoke.md").read_text()
    assert "| nn_agreement | sentences/s | speed-up |" in markdown


@pytest.mark.slow
def test_self_distillation_smoke_writes_the_table(tmp_path, data_dir):
    table = _smoke_table("self_distillation", tmp_path, data_dir, seeds=1)
    assert [row["setting"] for row in table["rows"]] == [
        "born_again_gen0", "born_again_gen1", "born_again_gen2", "born_again_gen3",
        "born_again_t4_gen1", "born_again_t4_gen2", "born_again_t4_gen3", "pskd"]
    assert (tmp_path / "runs" / "seed0" / "born_again_gen3" / "checkpoints").is_dir()


@pytest.mark.slow
def test_distillspec2024_smoke_writes_the_table(tmp_path, data_dir):
    table = _smoke_table("distillspec2024", tmp_path, data_dir, seeds=1)
    rows = {row["setting"]: row for row in table["rows"]}
    assert list(rows) == ["undistilled (sft)", "fkl", "tvd", "tvd on-policy (DistillSpec)"]
    gamma = 4
    for row in rows.values():
        assert 0.0 < row["value"] <= 1.0
        assert 1.0 <= row["extra"]["block_efficiency"]["value"] <= gamma + 1
    # The LM tables share one teacher, beside their workdirs.
    assert (tmp_path / "lm_teacher_docs_smoke" / "checkpoints").is_dir()


@pytest.mark.slow
def test_cd2023_smoke_writes_the_table_and_sample_grids(tmp_path, data_dir):
    table = _smoke_table("cd2023", tmp_path, data_dir, seeds=1)
    settings = [row["setting"] for row in table["rows"]]
    for kind in ("2-D", "digits"):
        assert f"{kind}: teacher (edm), heun NFE=35" in settings
        assert f"{kind}: CD, 1 step" in settings and f"{kind}: CD, 2 steps" in settings
    assert all(row["value"] >= 0 for row in table["rows"])
    markdown = (tmp_path / "results" / "cd2023_smoke.md").read_text()
    grids = sorted((tmp_path / "results" / "cd2023_smoke").glob("*.png"))
    # One PNG per sampled row (every row but the two data floors), linked from the table.
    assert len(grids) == len(settings) - 2
    assert all(f"(cd2023_smoke/{grid.name})" in markdown for grid in grids)
    # Teachers and the FD classifier live beside the workdir, for the other tables to reuse.
    assert (tmp_path / "diffusion_digits_edm_smoke" / "checkpoints").is_dir()
    assert (tmp_path / "hinton_teacher_digits_smoke" / "checkpoints").is_dir()
