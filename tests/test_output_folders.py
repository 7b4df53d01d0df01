"""The output rule's two helpers: StagedDir (results moved in when the run has them) and ClaimedDir
(a long run writing as it goes, the earlier run kept until the new one has results)."""

from __future__ import annotations

import json

import pytest

from r0kit.checks import MANIFEST, check_output_dir, check_output_file
from r0kit.errors import ConfigError
from r0kit.io import ClaimedDir, StagedDir


def _tree(folder):
    return {str(p.relative_to(folder)): (p.read_text() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _earlier_run(folder):
    folder.mkdir(parents=True)
    for name in ("image_000.png", "image_001.png", "contact_sheet.png", "log.csv"):
        (folder / name).write_text(f"old {name}")
    (folder / "notes.txt").write_text("the user's")
    (folder / MANIFEST).write_text(json.dumps({"files": ["image_000.png", "image_001.png", "contact_sheet.png", "log.csv", MANIFEST]}))


def test_commit_replaces_the_earlier_run_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    _earlier_run(out)
    staged = StagedDir(out)
    staged.open()
    for name in ("image.png", "log.csv"):
        (staged.path / name).write_text(f"new {name}")
    (staged.path / MANIFEST).write_text(json.dumps({"files": ["image.png", "log.csv", MANIFEST]}))
    staged.commit()
    assert _tree(out) == {
        "image.png": "new image.png", "log.csv": "new log.csv", "notes.txt": "the user's",
        MANIFEST: json.dumps({"files": ["image.png", "log.csv", MANIFEST]}),
    }


def test_discard_leaves_the_file_system_as_it_was(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    staged = StagedDir(out)
    staged.open()
    (staged.path / "image.png").write_text("x")
    staged.discard()
    assert list(tmp_path.iterdir()) == []  # the folders it made are gone too
    _earlier_run(tmp_path / "used")
    before = _tree(tmp_path / "used")
    staged = StagedDir(tmp_path / "used")
    staged.open()
    (staged.path / "image.png").write_text("x")
    staged.discard()
    assert _tree(tmp_path / "used") == before


def test_a_killed_run_s_staging_folder_is_cleared(tmp_path):
    (tmp_path / ".r0kit-partial-999999999").mkdir()  # no such process
    staged = StagedDir(tmp_path)
    staged.open()
    assert sorted(p.name for p in tmp_path.iterdir()) == [staged.path.name]
    staged.discard()


def test_claimed_rollback_restores_the_earlier_run_and_keep_drops_it(tmp_path):
    out = tmp_path / "run"
    _earlier_run(out)
    before = _tree(out)
    claim = ClaimedDir(out, replace=True)
    claim.start()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["notes.txt"]
    (out / "logs").mkdir()
    (out / "logs" / "metrics.csv").write_text("step\n")
    claim.rollback()
    assert _tree(out) == before
    claim = ClaimedDir(out, replace=True)
    claim.start()
    (out / "checkpoints").mkdir()
    claim.keep()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "notes.txt"]


def test_claimed_replace_refuses_outputs_no_run_lists_and_touches_nothing(tmp_path):
    """Without a manifest, --overwrite moved aside and then deleted every folder named like a run's
    output (the user's own logs/ and checkpoints/); it is now refused before anything moves."""
    out = tmp_path / "mine"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "lab-notes.txt").write_text("the user's")
    (out / "checkpoints").mkdir()
    (out / "paper.tex").write_text("the user's")
    before = _tree(out)
    claim = ClaimedDir(out, replace=True, replace_names=("checkpoints", "logs", "samples", "export"))
    with pytest.raises(ConfigError, match=r"holds checkpoints, logs, which no r0kit run lists.*nothing was changed"):
        claim.start()
    assert _tree(out) == before
    # a folder without a manifest but without any run output is used as it is
    other = tmp_path / "papers"
    other.mkdir()
    (other / "paper.tex").write_text("the user's")
    claim = ClaimedDir(other, replace=True, replace_names=("checkpoints", "logs"))
    claim.start()
    (other / "logs").mkdir()
    claim.keep()
    assert (other / "paper.tex").read_text() == "the user's"


def test_train_overwrite_refuses_a_folder_whose_outputs_no_run_lists_before_loading_a_model(tmp_path):
    from r0kit.train import parse_train, train

    out = tmp_path / "mine"
    (out / "export").mkdir(parents=True)
    (out / "export" / "model.safetensors").write_text("the user's")
    cfg = parse_train({"prompts": ["x"], "output": str(out), "generator": {"model": str(tmp_path / "no-such-model")},
                       "objective": {"rewards": {"contrast": {}}}})
    with pytest.raises(ConfigError, match=r"holds export, which no r0kit run lists"):
        train(cfg, overwrite=True)
    assert (out / "export" / "model.safetensors").read_text() == "the user's"
    # without --overwrite the refusal is the same one: suggesting --overwrite would only lead to it
    with pytest.raises(ConfigError, match=r"holds export, which no r0kit run lists") as exc:
        train(cfg)
    assert "Pass --overwrite" not in str(exc.value)
    # a used folder of the user's that holds none of a run's outputs still gets the ordinary advice
    other = tmp_path / "papers"
    other.mkdir()
    (other / "paper.tex").write_text("the user's")
    cfg.output = str(other)
    with pytest.raises(ConfigError, match=r"already holds files.*Pass --overwrite"):
        train(cfg)


def test_claimed_backup_restores_a_file_rewritten_in_place(tmp_path):
    out = tmp_path / "run"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "metrics.csv").write_text("step,loss\n1,0.5\n2,0.4\n")
    claim = ClaimedDir(out, backup=("logs/metrics.csv",))
    claim.start()
    (out / "logs" / "metrics.csv").write_text("step,loss\n1,0.5\n")
    claim.rollback()
    assert (out / "logs" / "metrics.csv").read_text() == "step,loss\n1,0.5\n2,0.4\n"
    assert sorted(p.name for p in out.iterdir()) == ["logs"]


def test_output_checks(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "a").write_text("x")
    (tmp_path / "dotted").mkdir()
    (tmp_path / "dotted" / ".hidden").write_text("x")
    with pytest.raises(ConfigError, match="'.*f' is a file"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "f" / "sub")
    with pytest.raises(ConfigError, match="--overwrite.*--resume latest"):
        check_output_dir(tmp_path / "used", resume_hint="--resume latest")
    assert check_output_dir(tmp_path / "used", overwrite=True) == tmp_path / "used"
    assert check_output_dir(tmp_path / "dotted") == tmp_path / "dotted"  # dot-files alone do not make it used
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    with pytest.raises(ConfigError, match="is a folder"):
        check_output_file(tmp_path / "used")
    with pytest.raises(ConfigError, match="--overwrite"):
        check_output_file(tmp_path / "f")
    assert check_output_file(tmp_path / "f", overwrite=True) == tmp_path / "f"


def test_overwrite_never_replaces_a_file_no_run_wrote_and_keeps_the_run_s_files(tmp_path):
    """--overwrite into a folder without a manifest replaced the user's own image.png; a staged
    folder of the same name as the user's replaced it whole."""
    from r0kit.errors import ConfigError
    from r0kit.io import StagedDir

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "image.png").write_text("the user's")
    (out / "sub" / "mine.txt").write_text("the user's too")
    staged = StagedDir(out)
    staged.open()
    (staged.path / "image.png").write_text("the run's")
    with pytest.raises(ConfigError, match=r"would replace 'image.png', which no r0kit run wrote there.*r0kit-unsaved-"):
        staged.commit()
    assert (out / "image.png").read_text() == "the user's"
    (kept,) = out.glob("r0kit-unsaved-*")
    assert (kept / "image.png").read_text() == "the run's"
    staged = StagedDir(out)
    staged.open()
    (staged.path / "sub").mkdir()
    (staged.path / "sub" / "new.txt").write_text("the run's")
    staged.commit()  # a folder no run wrote is merged, not replaced
    assert sorted(p.name for p in (out / "sub").iterdir()) == ["mine.txt", "new.txt"]


def test_new_plugin_overwrite_replaces_the_scaffold_s_files_only(tmp_path):
    from r0kit.errors import ConfigError
    from r0kit.scaffold import write

    target, _ = write("foo", "reward", tmp_path / "p")
    (target / "tests" / "test_mine.py").write_text("# the user's test\n")
    (target / "notes.txt").write_text("the user's notes\n")
    write("bar", "reward", target, overwrite=True)
    assert (target / "tests" / "test_mine.py").read_text() == "# the user's test\n"
    assert (target / "notes.txt").is_file() and (target / "r0kit_bar.py").is_file()
    assert not (target / "r0kit_foo.py").exists() and not (target / "tests" / "test_foo.py").exists()
    user = tmp_path / "u"
    user.mkdir()
    (user / "README.md").write_text("the user's readme\n")
    with pytest.raises(ConfigError, match="would replace 'README.md', which no r0kit run wrote"):
        write("foo", "reward", user, overwrite=True)
    assert (user / "README.md").read_text() == "the user's readme\n"


def test_a_used_folder_is_told_to_resume_only_where_a_checkpoint_is(tmp_path):
    """A folder of the user's (or a run killed before its first checkpoint) was told "--resume latest",
    which then said it holds no checkpoint; the hint is given only where resuming would work."""
    from r0kit.train import resume_hint

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    assert resume_hint(mine) == "" and resume_hint(tmp_path / "absent") == ""
    with pytest.raises(ConfigError) as exc:
        check_output_dir(mine, resume_hint=resume_hint(mine))
    assert "--resume" not in str(exc.value) and "--overwrite" in str(exc.value)
    half = mine / "checkpoints" / "step-0000010"
    half.mkdir(parents=True)  # a checkpoint whose state.json was never written
    assert resume_hint(mine) == ""
    (half / "state.json").write_text("{}")
    assert resume_hint(mine) == "--resume latest"


def test_a_manifest_listing_files_in_folders_replaces_exactly_those(tmp_path):
    """evaluate lists every file it wrote, row folders included: an --overwrite replaces those files,
    keeps what the user put beside them, and removes an earlier row's folder once emptied. Before,
    the manifest listed the row folder and the user's photo in it was deleted with it."""
    out = tmp_path / "ev"
    (out / "base").mkdir(parents=True)
    (out / "old-row").mkdir()
    for f in ("base/00000.png", "base/00001.png", "old-row/00000.png", "summary.csv"):
        (out / f).write_text("earlier run")
    (out / "base" / "my_photo.png").write_text("the user's")
    (out / MANIFEST).write_text(json.dumps({"command": "evaluate", "files": [
        "base/00000.png", "base/00001.png", "old-row/00000.png", "summary.csv", MANIFEST]}))
    staged = StagedDir(out)
    staged.open()
    (staged.path / "base").mkdir()
    (staged.path / "base" / "00000.png").write_text("this run")
    (staged.path / "summary.csv").write_text("this run")
    staged.commit()
    assert (out / "base" / "my_photo.png").read_text() == "the user's"
    assert (out / "base" / "00000.png").read_text() == "this run" and (out / "summary.csv").read_text() == "this run"
    assert not (out / "base" / "00001.png").exists()  # the earlier run's, not written again
    assert not (out / "old-row").exists()  # emptied of the earlier run's files, so gone


@pytest.mark.parametrize("name, argv", [
    ("summary.csv", ["evaluate", "r0kit-mini@1", "-r", "contrast"]),
    ("log.csv", ["optimize", "--steps", "2", "--no-progress"]),
])
def test_a_folder_holding_the_user_s_run_output_is_refused_before_running(tmp_path, capsys, name, argv):
    """evaluate and optimize said "Pass --overwrite", then with --overwrite ran and refused at the end."""
    from r0kit.cli import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_text("the user's")
    for extra in ([], ["--overwrite"]):
        assert main([*argv, "-o", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert f"holds {name}, which no r0kit run lists" in err and "Pass --overwrite" not in err
    assert sorted(p.name for p in out.iterdir()) == [name]
