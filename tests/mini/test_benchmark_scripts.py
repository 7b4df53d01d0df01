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
    ("reward_robustness", ["--eps", "-1", "--out", "/tmp/x.csv"], "finite numbers >= 0"),
    ("reward_robustness", ["--eps", "nan", "--out", "/tmp/x.csv"], "finite numbers >= 0"),
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
        assert 0 <= r.flipped <= 1 and 0 <= r.flipped_random <= 1 and 0 <= r.judge_wrong <= 1
        if r.eps == 0:
            assert r.flipped == 0 and r.flipped_random == 0 and r.rms == 0
        else:
            assert abs(r.rms - 1 / math.sqrt(3 * 32 * 32)) < 1e-9
