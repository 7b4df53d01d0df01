"""The mini world's benchmark scripts: what they write where, without running them."""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str):
    """``benchmarks/mini/<name>.py`` as a module (registered first: its dataclasses look their module up)."""
    key = f"mini_benchmark_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "benchmarks" / "mini" / f"{name}.py")
        sys.modules[key] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[key])
    return sys.modules[key]


def test_reward_agreement_writes_each_split_to_its_own_table():
    """``--split train`` without ``--out`` once overwrote the held-out table."""
    script = _script("reward_agreement")
    results = ROOT / "benchmarks" / "results"
    assert script.default_out("heldout") == results / "mini_reward_agreement_cpu.csv"
    assert script.default_out("train") == results / "mini_reward_agreement_cpu_train.csv"
    assert script.default_out("heldout").is_file() and script.default_out("train").is_file()


@pytest.mark.parametrize("name, argv, named", [
    ("reward_agreement", ["--source", "r0kit-mini@25"], "--source"),
    ("reward_agreement", ["--samples", "4", "--split", "train"], "--samples"),
    ("probe_conditioning", ["--model", "elsewhere"], "--model"),
    ("probe_conditioning", ["--seed", "4", "--samples", "8"], "--samples, --seed change"),
    ("ablate", ["--steps", "150"], "--steps"),
    ("reward_robustness", ["--pairs", "1"], "--pairs"),
    ("reward_robustness", ["--eps", "0.5", "--pgd-steps", "3"], "--eps, --pgd-steps change"),
])
def test_a_run_with_other_settings_must_name_its_out(name, argv, named, capsys):
    """Any measured option changed without ``--out`` is refused before anything loads, naming the options
    and the committed table it would have overwritten (it once wrote over it)."""
    with pytest.raises(SystemExit) as exc:
        _script(name).main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "--out" in err and "benchmarks/results" in err


@pytest.mark.parametrize("name, argv, said", [
    ("reward_agreement", ["--samples", "4", "--out", "benchmarks/results/mini_reward_agreement_cpu.csv"], "--samples changes"),
    ("reward_agreement", ["--split", "train", "--out", "benchmarks/results/mini_reward_agreement_cpu.csv"], "not this run's table"),
    ("probe_conditioning", ["--seed", "4", "--out", "benchmarks/results/elsewhere.csv"], "--seed changes"),
    ("ablate", ["--steps", "150", "--out", "benchmarks/results"], "--steps changes"),
])
def test_out_cannot_put_another_measurement_into_the_committed_results(name, argv, said, capsys):
    with pytest.raises(SystemExit):
        _script(name).main(argv)
    assert said in capsys.readouterr().err


@pytest.mark.parametrize("name, argv, said", [
    ("ablate", ["--only", "bogus"], "invalid choice"),
    ("ablate", ["--threads", "0"], "must be >= 1"),
    ("probe_conditioning", ["--timesteps", "abc"], "comma-separated whole numbers"),
    ("probe_conditioning", ["--timesteps", "5000"], "[0, 999]"),
    ("probe_conditioning", ["--samples", "0"], "must be >= 1"),
    ("probe_conditioning", ["--samples", "2", "--out", "/tmp"], "is a folder"),
    ("reward_robustness", ["--eps", "a,1", "--out", "/tmp/x.csv"], "comma-separated numbers"),
    ("reward_robustness", ["--eps=-1", "--out", "/tmp/x.csv"], "must be finite, >= 0"),
    ("reward_robustness", ["--eps", "nan", "--out", "/tmp/x.csv"], "must be finite, >= 0"),
    ("reward_robustness", ["--eps", "0.5,", "--out", "/tmp/x.csv"], "'' in '0.5,' is not a number"),
    ("reward_robustness", ["--eps", "100", "--out", "/tmp/x.csv"], "moves at most that far"),
    ("reward_robustness", ["--pgd-steps", "0"], "must be >= 1"),
    ("reward_robustness", ["--config", "/nonexistent/c.toml", "--out", "/tmp/x.csv"], "/nonexistent/c.toml"),
])
def test_bad_values_are_refused_before_anything_loads(name, argv, said, capsys):
    with pytest.raises(SystemExit):
        _script(name).main(argv)
    assert said in capsys.readouterr().err


def test_timesteps_with_spaces_mean_the_default():
    probe = _script("probe_conditioning")
    assert probe.timesteps("999, 900,700,500,300") == (999, 900, 700, 500, 300)


class _Loaded(Exception):
    """Raised in place of a script's measurement: the checks before it passed."""


_MEASURE = {"reward_agreement": "agreement", "probe_conditioning": "probe", "ablate": "heldout_prompts",
            "reward_robustness": "robustness"}


def _writes(name: str, folder: Path) -> tuple[list[str], list[Path]]:
    """``--out`` for ``name`` in ``folder``, and every file such a run writes."""
    if name == "ablate":
        return ["--out", str(folder)], _script("ablate").written_files(folder)
    if name == "probe_conditioning":
        out = folder / "probe.csv"
        return ["--out", str(out)], [out, _script("probe_conditioning").clip_table(out)]
    return ["--out", str(folder / "agreement.csv")], [folder / "agreement.csv"]


_EACH_FILE = [(name, i) for name, n in (("ablate", 3), ("probe_conditioning", 2), ("reward_agreement", 1), ("reward_robustness", 1))
              for i in range(n)]


@pytest.mark.parametrize("name, which", _EACH_FILE)
def test_an_existing_out_needs_overwrite(name, which, tmp_path, capsys, monkeypatch):
    """A run once replaced the user's earlier ``--out`` without a word: now any one file it would replace
    is refused before anything loads, named with ``--overwrite``; with ``--overwrite`` the checks pass."""
    argv, files = _writes(name, tmp_path)
    there = files[which]
    there.write_text("an earlier run's table\n")
    script = _script(name)

    def measured(*a, **k):
        raise _Loaded

    monkeypatch.setattr(script, _MEASURE[name], measured)
    with pytest.raises(SystemExit) as exc:
        script.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(there) in err and "--overwrite" in err
    assert there.read_text() == "an earlier run's table\n"
    with pytest.raises(_Loaded):
        script.main([*argv, "--overwrite"])


@pytest.mark.parametrize("name", sorted(_MEASURE))
def test_a_default_run_refreshes_the_committed_tables_without_overwrite(name, monkeypatch):
    """The committed tables exist, and a run with the default options rewrites them (git keeps them)."""
    script = _script(name)

    def measured(*a, **k):
        raise _Loaded

    monkeypatch.setattr(script, _MEASURE[name], measured)
    with pytest.raises(_Loaded):
        script.main([])


def test_ablate_names_only_the_files_it_wrote(tmp_path, capsys):
    """Without R0/R0+ curves no plot is drawn, so none may be named (it once was)."""
    script = _script("ablate")
    runs = [script.Run("gradnorm", arm, seed, {"geneval": 0.25 + 0.01 * seed, "fid": 1.0, "diversity": 0.1}, [])
            for arm in ("normalized (R0)", "raw gradients") for seed in range(2)]
    args = argparse.Namespace(out=tmp_path, seeds=2, steps=100, only=["gradnorm"])
    script.write_results(runs, args, 60.0)
    table, summary, plot = script.written_files(tmp_path)
    assert table.is_file() and summary.is_file() and not plot.exists()
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {table}, {summary}"


def test_reward_agreement_says_where_it_wrote(tmp_path, capsys, monkeypatch):
    script = _script("reward_agreement")
    row = {"source": "r0kit-mini@4", "split": "heldout", "reward": "clip", "check": "shape", "prompts": 40, "samples": 8,
           "mean": 0.5, "best": 0.5, "oracle": 0.5, "corr": 0.0}
    monkeypatch.setattr(script, "agreement", lambda *a, **k: [row])
    out = tmp_path / "a.csv"
    assert script.main(["--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and out.read_text().startswith("source,split,reward")


def test_ablate_gives_no_verdict_from_one_seed():
    """``--seeds 1`` once printed "reproduces" for a gap of one image in 80, with no spread to weigh it by."""
    verdict = _script("ablate").verdict
    assert verdict((0.263, 0.0, 1), (0.25, 0.0, 1)).startswith("inconclusive")
    assert verdict((0.30, 0.01, 3), (0.25, 0.01, 3)) == "reproduces"
    assert verdict((0.20, 0.01, 3), (0.25, 0.01, 3)) == "does not reproduce"


def _hps_term():
    from r0kit.commands._common import config_rewards

    terms, _ = config_rewards(None)
    return next(t for t in terms if t.label == "hpsv2")


def test_the_attack_raises_the_reward_within_its_budget():
    """L2 PGD on the world's HPS: every moved image stays an image, within ``eps`` of where it started, and
    scores higher; ``eps = 0`` moves nothing."""
    script = _script("reward_robustness")
    prompts = ["a small cyan circle at the top", "a cyan circle left of a yellow diamond", "two orange diamonds"]
    good, bad, rows = script.pairs(prompts, 1, seed=0)
    assert good.shape == bad.shape == (3, 3, 32, 32) and rows == prompts
    assert not torch.equal(good, bad)
    term = _hps_term()
    moved = script.attack(term, bad, rows, 0.5, steps=4)
    assert moved.min() >= 0 and moved.max() <= 1
    assert (moved - bad).flatten(1).norm(dim=1).max() <= 0.5 + 1e-4
    with torch.no_grad():
        before, after = script.reward_values(term, bad, rows), script.reward_values(term, moved, rows)
    assert (after > before).all(), (before, after)
    assert torch.equal(script.attack(term, bad, rows, 0.0, steps=4), bad)


def test_robustness_rows_count_flips_only_among_pairs_ranked_right(monkeypatch):
    """With no budget nothing flips; with one, the flipped share is of the pairs the reward ranked right."""
    script = _script("reward_robustness")
    rows = script.robustness(None, (0.0, 1.0), pgd_steps=3, per_prompt=1, prompts=["a large purple triangle", "two yellow squares"])
    assert [(r.reward, r.eps) for r in rows] == [(k, e) for k in ("hpsv2", "clip", "aesthetic") for e in (0.0, 1.0)]
    for r in rows:
        assert r.pairs == 2 and 0 <= r.ranked_right <= 2 and r.clean_acc == r.ranked_right / 2
        if r.ranked_right == 0:  # no denominator: unknown, not "robust"
            assert math.isnan(r.flipped) and math.isnan(r.flipped_random)
        else:
            assert 0 <= r.flipped <= 1 and 0 <= r.flipped_random <= 1
        assert 0 <= r.moved_l2 <= r.eps + 1e-4
        if r.eps == 0:
            assert r.moved_l2 == 0 and r.rms == 0
            assert r.ranked_right == 0 or (r.flipped == 0 and r.flipped_random == 0)
            assert math.isnan(r.judge_wrong_flipped)  # nothing flipped
        else:
            assert abs(r.rms - 1 / math.sqrt(3 * 32 * 32)) < 1e-9


def _config(tmp_path, body: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(body)
    return path


def test_a_reward_is_attacked_in_the_direction_r0_climbs_it(tmp_path):
    """A negative weight turns the reward around (R0 descends it); a zero weight leaves it out, named (it once
    divided by the weight and crashed on NaN images)."""
    script = _script("reward_robustness")
    said = []
    cfg = _config(tmp_path, '[objective.rewards.clip]\nmodel = "r0kit-mini-clip"\nweight = -2\n'
                            '[objective.rewards.hpsv2]\nmodel = "r0kit-mini-clip"\ncheckpoint = "r0kit-mini-hps"\nweight = 0\n')
    prompts = ["a large purple triangle", "two yellow squares", "a small cyan circle at the top"]
    rows = script.robustness(cfg, (0.0,), pgd_steps=1, per_prompt=2, prompts=prompts, say=said.append)
    plus = script.robustness(None, (0.0,), pgd_steps=1, per_prompt=2, prompts=prompts, say=said.append)
    assert [r.reward for r in rows] == ["clip"] and any("hpsv2" in line and "weight 0" in line for line in said)
    clip = next(r for r in plus if r.reward == "clip")
    assert rows[0].ranked_right == clip.pairs - clip.ranked_right  # no ties among six rendered pairs


def test_eps_drops_duplicates_and_a_preset_name_is_the_default_config(tmp_path, monkeypatch):
    script = _script("reward_robustness")
    assert script.budgets("0, 0.5,0.5,-0,1") == (0.0, 0.5, 1.0)
    seen = {}

    def measured(config, eps, *a, **k):
        seen.update(config=config, eps=eps)
        raise _Loaded

    monkeypatch.setattr(script, "robustness", measured)
    with pytest.raises(_Loaded):  # the preset by name or by file is the default run: no --out needed
        script.main(["--config", "mini", "--eps", "0,0.25,0.5,1,2,2"])
    assert seen == {"config": None, "eps": (0.0, 0.25, 0.5, 1.0, 2.0)}


@pytest.mark.parametrize("name, argv", [
    ("reward_robustness", ["--pairs", "1", "--eps", "0"]),
    ("reward_agreement", ["--samples", "2"]),
])
def test_a_reward_that_fails_to_load_is_one_error_line(name, argv, tmp_path, capsys):
    """A config that parses but whose reward cannot load fails with the reward's message, not a traceback."""
    script = _script(name)
    cfg = _config(tmp_path, '[objective.rewards.clip]\nmodel = "no-such-clip-model"\n')
    with pytest.raises(SystemExit) as exc:
        script.main(["--config", str(cfg), *argv, "--out", str(tmp_path / "o.csv")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "error:" in err and "no-such-clip-model" in err and "Traceback" not in err
    assert not (tmp_path / "o.csv").exists()


def test_write_table_formats_numpy_floats_and_refuses_ragged_rows(tmp_path):
    import numpy as np

    from r0kit.commands._common import write_table

    out = write_table(tmp_path / "a" / "t.csv", [{"x": np.float32(1 / 3), "n": np.int64(7), "s": "a"}])
    assert out.read_text().splitlines() == ["x,n,s", "0.3333,7,a"]
    with pytest.raises(ValueError, match="no rows"):
        write_table(tmp_path / "b.csv", [])
    with pytest.raises(ValueError, match="row 1 has keys"):
        write_table(tmp_path / "c.csv", [{"x": 1.0}, {"y": 2.0}])
