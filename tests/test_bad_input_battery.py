"""Bad input through the ``r0kit`` command: exit 2, no traceback, a message naming what the user typed,
and every file that was there before left byte for byte as it was.

Each case runs in its own folder holding the same fixtures: a file ``f``, an
earlier run in ``used/``, an empty folder, a CSV, an image folder, configs.
The whole folder is snapshotted before and compared after, so a case also
fails if the command created anything (an output folder, a metrics file).

Cases that argparse refuses run the installed ``r0kit`` executable, one
process each (they exit before torch is imported). The others are batched: one
process per group runs the command's entry point, ``r0kit.cli.main``, on each
case in turn (each subprocess imports torch once, 2-4 s), with the plugin host
rebuilt per case. The ``plugins`` group makes misbehaving rewards real
entry-point plugins, found through package metadata as a user's would be.

The closing comment of each group's list names the kind of the issue it covers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    needles: tuple[str, ...]
    kind: int  # the kind of issue 12 it covers
    env: dict[str, str] = field(default_factory=dict)


def C(id: str, kind: int, argv: str | list[str], *needles: str, **env: str) -> Case:
    args = argv.split() if isinstance(argv, str) else argv
    return Case(id, tuple(args), needles, kind, env)


RUN_CONFIG = """
prompts = ["a pattern"]
steps = {steps}
[generator]
name = "pixel"
height = 16
width = 16
[optimizer]
name = "adam"
lr = {lr}
[objective.rewards.contrast]
"""

TRAIN_CONFIG = """
prompts = {prompts}
steps = 2
batch_size = 1
output = "train-out"
[generator]
model = "no-such-model-folder"
steps = 2
height = 16
width = 16
{generator_extra}
[optimizer]
lr = {lr}
[objective]
normalize_gradients = true
[objective.rewards.colorfulness]
"""


def populate(folder: Path) -> None:
    """The fixtures every case sees (all small)."""
    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    folder.mkdir(parents=True)
    (folder / "f").write_text("a file, not a folder\n")
    used = folder / "used"
    used.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(used / "image.png")
    (used / "log.csv").write_text("step,sample,prompt,total\n0,0,x,0.5\n")
    (used / "notes.txt").write_text("the user's own notes\n")
    (used / "r0kit-run.json").write_text(json.dumps({"command": "optimize", "files": ["image.png", "log.csv", "r0kit-run.json"]}))
    (folder / "empty").mkdir()
    (folder / "existing.csv").write_text("file,prompt,contrast\n")
    imgs = folder / "imgs"
    imgs.mkdir()
    for i in range(2):
        info = PngInfo()
        info.add_text("prompt", f"prompt {i}")
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(imgs / f"{i}.png", pnginfo=info)
    (folder / "prompts.txt").write_text("a red apple\na blue car\n")
    (folder / "obj.toml").write_text("[objective.rewards.contrast]\n")
    (folder / "obj_big.toml").write_text("[objective.rewards.contrast]\nweight = 1e30\n")
    (folder / "obj_nan.toml").write_text("[objective.rewards.contrast]\nweight = nan\n")
    (folder / "obj_dev.toml").write_text("[objective.rewards.contrast]\ndevice = 'cuda:99'\n")
    # A regularizer whose option only fails inside the first step: the run crashes at step 0.
    (folder / "obj_step0.toml").write_text("[objective.rewards.contrast]\n[objective.regularizers.noise_norm]\nkey = 'nope'\n")
    for name, plugin in (("shape_b1", "shape_b1"), ("shape_bplus1", "shape_bplus1"), ("boom", "boom")):
        (folder / f"obj_{name}.toml").write_text(f"[objective.rewards.{plugin}]\n")
    (folder / "run_steps0.toml").write_text(RUN_CONFIG.format(steps=0, lr=0.1))
    (folder / "run_lrinf.toml").write_text(RUN_CONFIG.format(steps=3, lr="inf"))
    ok = '["a red apple", "a blue car"]'
    (folder / "train.toml").write_text(TRAIN_CONFIG.format(prompts=ok, generator_extra="", lr=1e-3))
    (folder / "train_dev.toml").write_text(TRAIN_CONFIG.format(prompts=ok, generator_extra="device = 'cuda:99'", lr=1e-3))
    (folder / "train_lr.toml").write_text(TRAIN_CONFIG.format(prompts=ok, generator_extra="", lr=-1))
    (folder / "train_empty.toml").write_text(TRAIN_CONFIG.format(prompts='["a red apple", " "]', generator_extra="", lr=1e-3))


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
        if "__pycache__" not in p.parts
    }


# -- the cases ----------------------------------------------------------------------------------
# Refused by argparse: the installed executable, one process each.
ARGPARSE = [
    C("optimize-lr-inf", 4, "optimize x --lr inf", "--lr", "finite"),
    C("optimize-grad-clip-nan", 4, "optimize x --grad-clip nan", "--grad-clip", "finite"),
    C("optimize-log-every-0", 4, "optimize x --log-every 0", "--log-every", ">= 1"),
    C("train-max-steps-0", 4, "train --max-steps 0", "--max-steps", ">= 1"),
    C("score-batch-size-0", 4, "score imgs -r contrast --batch-size 0", "--batch-size", ">= 1"),
    C("evaluate-steps-0", 4, "evaluate imgs -r contrast --steps 0", "--steps", ">= 1"),
    C("evaluate-size-4", 4, "evaluate imgs -r contrast --size 4", "--size", ">= 8"),
    C("evaluate-seed-negative", 4, "evaluate imgs -r contrast --seed -3", "--seed", ">= 0"),
    C("score-option-short-is-gone", 7, "score imgs -r contrast --option contrast.x=1", "unrecognized arguments"),
    C("evaluate-output-empty", 1, ["evaluate", "imgs", "-r", "contrast", "-o", ""], "--output", "is empty"),
]  # kinds 4 (numbers named by their flag) and 7 (one convention: --option is now --reward-option/-R)

OPTIMIZE = [
    C("optimize-output-is-file", 1, "optimize x -o f --steps 50", "--output 'f' is a file"),
    C("optimize-output-under-file", 1, "optimize x -o f/run", "'f' is a file"),
    C("optimize-device-missing", 1, "optimize x --device cuda:99", "--device 'cuda:99'"),
    C("optimize-device-nonsense", 1, "optimize x --device banana", "--device 'banana' is not a device"),
    C("optimize-generator-device", 1, ["optimize", "x", "-G", "device='cuda:99'"], "-G device"),
    C("optimize-reward-device", 1, "optimize x --objective obj_dev.toml", "objective.rewards.contrast.device", "obj_dev.toml"),
    C("optimize-model-missing", 1, "optimize x --generator noise --model ./no-such-model", "--model", "does not exist"),
    C("optimize-model-not-a-pipeline", 1, "optimize x --generator noise --model imgs", "--model", "model_index.json"),
    C("optimize-flag-and-G-clash", 1, "optimize x --steps 2 --height 8 -G height=16", "--height and -G height=16 both set generator.height"),
    C("optimize-training-preset", 1, "optimize x --preset train_tiny", "--preset 'train_tiny' is a preset of r0kit train", "r0kit train --preset train_tiny"),
    C("train-optimize-preset", 1, "train --preset demo", "--preset 'demo' is a preset of r0kit optimize"),
    C("optimize-model-with-steps", 1, "optimize x --model r0kit-mini@4", "--model 'r0kit-mini@4'", "evaluate's source syntax", "'r0kit-mini'"),
    C("optimize-used-folder", 2, "optimize x -o used", "--overwrite", "'used'"),
    C("optimize-overwrite-crash-step0", 2, "optimize x -o used --overwrite --objective obj_step0.toml", "sample.state['nope']"),
    C("optimize-overwrite-crash-step0-batch", 2,
      "optimize x y z -o used --overwrite --batch-size 2 --objective obj_step0.toml", "sample.state['nope']"),
    C("optimize-steps-0", 4, "optimize x --steps 0", "--steps", "greater than or equal to 1"),
    C("optimize-lr-0", 4, "optimize x --lr 0", "--lr", "greater than 0"),
    C("optimize-lr-absurd", 4, "optimize x --lr 1e9", "--lr", "less than or equal"),
    C("optimize-batch-size-0", 4, "optimize x --batch-size 0", "--batch-size"),
    C("optimize-grad-clip-negative", 4, "optimize x --grad-clip -1", "--grad-clip"),
    C("optimize-seed-negative", 4, "optimize x --seed -1", "--seed"),
    C("optimize-empty-prompt", 4, ["optimize", ""], "the prompt argument(s)", "prompt 1 of 1 is empty"),
    C("optimize-second-prompt-empty", 4, ["optimize", "fine", "  "], "prompt 2 of 2 is empty"),
    C("optimize-weight-1e30", 4, "optimize x --objective obj_big.toml", "obj_big.toml", "objective.rewards.contrast.weight"),
    C("optimize-weight-nan", 4, "optimize x --objective obj_nan.toml", "obj_nan.toml", "objective.rewards.contrast.weight"),
    C("optimize-config-steps-0", 4, "optimize --config run_steps0.toml", "run_steps0.toml", "steps"),
    C("optimize-config-lr-inf", 4, "optimize --config run_lrinf.toml", "run_lrinf.toml", "optimizer.lr", "finite"),
    C("optimize-generator-option-unknown", 4, "optimize x -G steps=2", "pixel", "'steps'"),
    C("optimize-generator-option-shape", 4, "optimize x -G notkeyvalue", "-G 'notkeyvalue'", "KEY=VALUE"),
    C("optimize-reward-option-unknown-reward", 4, "optimize x -R nope.color=1", "--reward-option nope", "has no reward 'nope'", "target_color"),
    C("optimize-reward-option-unknown-key", 4, "optimize x -R target_color.colr=1", "'colr'", "--reward-option target_color.colr"),
    C("train-reward-option-unknown-key", 4, "train --config train.toml -R colorfulness.nope=1 -o new", "'nope'", "--reward-option colorfulness.nope"),
    C("optimize-generator-init-scale-nan", 4, "optimize x -G init_scale=nan", "init_scale", "a finite number >= 0", "nan",
      "given on the command line: -G init_scale"),
    C("optimize-generator-init-scale-huge", 4, ["optimize", "x", "-G", "init_scale=" + "9" * 400], "init_scale", "..."),
    C("optimize-reward-option-bad-value", 4, "optimize x -R target_color.color='#zz0000'", "'#zz0000'",
      "given on the command line: --reward-option target_color.color"),
    C("optimize-generator-init-scale-string", 4, "optimize x -G init_scale='big'", "init_scale", "'big'"),
    C("optimize-height-0", 4, "optimize x --height 0", "height"),
    C("optimize-objective-missing", 4, "optimize x --objective nope.toml", "nope.toml", "does not exist"),
    C("optimize-prompts-file-missing", 4, "optimize --prompts-file nope.txt", "nope.txt", "does not exist"),
    C("optimize-preset-unknown", 4, "optimize --preset nope", "--preset 'nope'"),
]  # kinds 1 (check first), 2 (used folder refused; a failed --overwrite run leaves it as it was), 4

COMMANDS = [
    C("score-output-is-folder", 1, "score imgs -r contrast -o empty", "--output 'empty' is a folder"),
    C("score-output-under-file", 1, "score imgs -r contrast -o f/scores.csv", "'f' is a file"),
    C("score-output-is-an-image-name", 1, "score imgs -r contrast -o imgs/new.png", "--output 'imgs/new.png' names an image file", "imgs/new.csv"),
    C("score-option-device", 1, "score imgs -r clip -R clip.device='cuda:99'", "--reward-option clip.device"),
    C("score-output-exists", 2, "score imgs -r contrast -o existing.csv", "--overwrite", "existing.csv"),
    C("score-folder-missing", 4, "score nowhere -r contrast", "'nowhere' is not a folder"),
    C("score-option-shape", 4, "score imgs -r contrast -R novalue", "--reward-option 'novalue'"),
    C("score-option-unselected", 4, "score imgs -r contrast -R clip.device='cpu'", "no --reward selects"),
    C("evaluate-output-is-file", 1, "evaluate imgs -r contrast -o f", "--output 'f' is a file"),
    C("evaluate-device-missing", 1, "evaluate imgs -r contrast --device cuda:99", "--device 'cuda:99'"),
    C("evaluate-late-source-missing", 1, "evaluate imgs nowhere -r colorfulness -o ev", "'nowhere' does not exist"),
    C("evaluate-used-folder", 2, "evaluate imgs -r colorfulness -o used", "--overwrite"),
    C("evaluate-prompts-file-missing", 4, "evaluate imgs -r colorfulness --prompts-file nope.txt", "nope.txt"),
    C("evaluate-too-many-labels", 4, "evaluate imgs -r colorfulness --label a --label b", "--label"),
    C("evaluate-size-off-the-vae-grid", 4, "evaluate r0kit-mini@1 -r colorfulness --prompts-file prompts.txt --size 33 -o ev",
      "--size 33 does not fit 'r0kit-mini'", "multiple of 4"),
    C("evaluate-empty-label", 4, ["evaluate", "imgs", "-r", "contrast", "--label", " ", "-o", "ev"], "--label number 1 is empty"),
    C("evaluate-geneval-foreign-prompt", 4, "evaluate r0kit-mini@1 -m mini_geneval --prompts-file prompts.txt -o ev",
      "metric 'mini_geneval': mini_geneval judges only the mini world's prompts"),
    C("evaluate-size-huge", 4, "evaluate r0kit-mini@1 -r colorfulness --prompts-file prompts.txt --size 100000 -o ev",
      "--size 100000 does not fit 'r0kit-mini'", "from 8 to 8192"),
    C("new-plugin-under-file", 1, "new-plugin sharp -o f/pkg", "'f' is a file"),
    C("new-plugin-used-folder", 2, "new-plugin sharp -o used", "--overwrite"),
    C("train-output-is-file", 1, "train --config train.toml -o f", "--output 'f' is a file"),
    C("train-device-missing", 1, "train --config train_dev.toml", "generator.device", "train_dev.toml"),
    C("train-resume-missing", 1, "train --config train.toml --resume nowhere/step-0000001", "nowhere/step-0000001", "does not exist"),
    C("train-model-missing", 1, "train --config train.toml --model ./no-such-model -o new", "--model", "does not exist"),
    C("train-used-folder", 2, "train --config train.toml -o used", "--overwrite", "or choose another"),  # no checkpoint: no --resume hint
    C("train-resume-latest-nothing", 2, "train --config train.toml -o empty --resume latest", "no complete checkpoint", "without --resume"),
    C("train-resume-and-overwrite", 2, "train --config train.toml -o used --resume latest --overwrite", "give one of them"),
    C("train-steps-0", 4, "train --config train.toml --steps 0", "--steps"),
    C("train-config-lr", 4, "train --config train_lr.toml", "train_lr.toml", "optimizer.lr"),
    C("train-empty-prompt", 4, "train --config train_empty.toml", "prompt 2 of 2 is empty"),
    C("train-prompts-file-missing", 4, "train --config train.toml --prompts-file nope.txt", "nope.txt", "does not exist"),
    C("train-no-prompts", 7, "train --preset train_r0", "--prompts-file"),
    C("train-preset-unknown", 7, "train --preset train_huge", "--preset 'train_huge'", "train_tiny"),
]  # kinds 1, 2, 4 and 7 (a preset without prompts asks for --prompts-file; plain `r0kit train` is the mini demo)

BAD_PLUGINS = """
    import torch
    import r0kit

    RAW = r0kit.RewardContract(size=None, mean=(0, 0, 0), std=(1, 1, 1), needs_prompt=False)

    def _mean(x):
        return x.flatten(1).mean(1)

    @r0kit.hookimpl
    def r0kit_register_rewards(register):
        register("shape_b1", lambda: (lambda x, p: _mean(x)[:, None]), contract=RAW)
        register("shape_bplus1", lambda: (lambda x, p: torch.cat([_mean(x), _mean(x)[:1]])), contract=RAW)
        register("scalar", lambda: (lambda x, p: _mean(x).sum()), contract=RAW)
        register("nan_score", lambda: (lambda x, p: _mean(x) * float("nan")), contract=RAW)
        register("int_score", lambda: (lambda x, p: (_mean(x) * 100).long()), contract=RAW)
        register("boom", lambda: (lambda x, p: (_ for _ in ()).throw(ValueError("boom inside the reward"))), contract=RAW)
"""

DUPLICATE = """
    import r0kit

    @r0kit.hookimpl
    def r0kit_register_rewards(register):
        register("contrast", lambda: (lambda x, p: x.flatten(1).mean(1)),
                 contract=r0kit.RewardContract(size=None, mean=(0, 0, 0), std=(1, 1, 1), needs_prompt=False))
"""

PLUGINS = [
    C("score-shape-b1", 5, "score imgs -r shape_b1", "shape_b1", "r0kit-bad-rewards", "shape (2, 1)"),
    C("score-shape-bplus1", 5, "score imgs -r shape_bplus1", "shape_bplus1", "shape (3,)"),
    C("score-scalar", 5, "score imgs -r scalar", "scalar", "shape ()"),
    C("score-nan-writes-no-csv", 5, "score imgs -r nan_score -o scores.csv", "nan_score", "'0.png' as NaN", "--skip-bad"),
    C("score-int-dtype", 5, "score imgs -r int_score", "int_score", "torch.int64"),
    C("score-plugin-raises", 5, "score imgs -r boom", "reward 'boom' (plugin r0kit-bad-rewards) raised ValueError"),
    C("evaluate-shape-b1", 5, "evaluate imgs -r shape_b1 -o ev", "shape_b1", "shape (1, 1)"),
    C("optimize-shape-b1", 5, "optimize x -o used --overwrite --objective obj_shape_b1.toml", "shape_b1", "shape (1, 1)"),
    C("optimize-plugin-raises-at-step0", 3, "optimize x -o used --overwrite --objective obj_boom.toml", "raised ValueError"),
    C("duplicate-plugin-is-named", 6, "optimize x -G steps=2", "plugin 'r0kit-dup' was not loaded", "registered by both"),
]  # kinds 5 (one output contract everywhere), 3 (a crash before any iterate writes nothing), 6

ALLOWLIST = [
    C("allowlist-unknown-name-filtered", 6, "optimize x", "R0KIT_LOAD_PLUGINS", "Known regularizers: none",
      R0KIT_LOAD_PLUGINS="r0kit_analytic"),
    C("allowlist-name-matches-nothing", 6, "optimize x -G steps=2", "'r0kit_pixels', which matches no plugin",
      "did you mean 'r0kit_pixel'", R0KIT_LOAD_PLUGINS="r0kit_analytic,r0kit_regularizers,r0kit_pixel,r0kit_pixels"),
]  # kind 6

GROUPS = {"optimize": OPTIMIZE, "commands": COMMANDS, "plugins": PLUGINS, "allowlist": ALLOWLIST}
ALL = ARGPARSE + OPTIMIZE + COMMANDS + PLUGINS + ALLOWLIST

DRIVER = r"""
import contextlib, io, json, os, sys, traceback
cases = json.load(open(sys.argv[1]))
from r0kit.cli import main
from r0kit.plugins import reset_host
results = []
for case in cases:
    os.chdir(case["dir"])
    os.environ.update(case["env"])
    reset_host()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(case["argv"])
        except SystemExit as exc:
            rc = exc.code
        except BaseException:
            traceback.print_exc()
            rc = "escaped"
    for key in case["env"]:
        os.environ.pop(key, None)
    results.append({"id": case["id"], "rc": rc, "stderr": err.getvalue()})
json.dump(results, open(sys.argv[2], "w"))
"""


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "plugins"), env.get("PYTHONPATH", "")])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra or {})
    return env


def _check(case: Case, rc, stderr: str, before: dict, folder: Path) -> list[str]:
    problems = []
    if rc != 2:
        problems.append(f"exit {rc!r}, expected 2")
    if "Traceback" in stderr:
        problems.append("printed a traceback")
    problems += [f"does not name {n!r}" for n in case.needles if n not in stderr]
    after = snapshot(folder)
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k, b"?") != after.get(k, b"?"))
        problems.append(f"changed the files {changed}")
    return [f"{case.id}: {p}\n    stderr: {stderr.strip()[-600:]}" for p in problems]


@pytest.fixture
def plugin_path(tmp_path):
    """Two entry-point distributions: rewards that break the output contract, and one that clashes with a built-in."""
    folder = tmp_path / "site"
    folder.mkdir()
    for dist, module, body in (("r0kit-bad-rewards", "r0kit_bad_rewards", BAD_PLUGINS), ("r0kit-dup", "r0kit_dup", DUPLICATE)):
        (folder / f"{module}.py").write_text(textwrap.dedent(body))
        info = folder / f"{dist.replace('-', '_')}-0.1.dist-info"  # the wheel spelling: '-' separates the version
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[r0kit]\n{dist} = {module}\n")
    return folder


def _executable() -> list[str]:
    script = Path(sys.executable).parent / "r0kit"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "r0kit.cli"]


def test_argparse_refusals_through_the_installed_command(tmp_path):
    problems = []
    for case in ARGPARSE:
        folder = tmp_path / case.id
        populate(folder)
        before = snapshot(folder)
        proc = subprocess.run([*_executable(), *case.argv], cwd=folder, env=_env(case.env),
                              capture_output=True, text=True, timeout=120)
        problems += _check(case, proc.returncode, proc.stderr, before, folder)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_bad_input_group(group, tmp_path, plugin_path):
    cases = GROUPS[group]
    before = {}
    for case in cases:
        populate(tmp_path / case.id)
        before[case.id] = snapshot(tmp_path / case.id)
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps([{"id": c.id, "argv": list(c.argv), "env": c.env, "dir": str(tmp_path / c.id)} for c in cases]))
    extra = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), str(plugin_path)])}
    if group == "plugins":
        extra["R0KIT_DISABLE_AUTOLOAD"] = "0"
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(spec), str(tmp_path / "results.json")],
                          env=_env(extra), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["id"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    problems = []
    for case in cases:
        r = results[case.id]
        problems += _check(case, r["rc"], r["stderr"], before[case.id], tmp_path / case.id)
    assert not problems, "\n".join(problems)


def test_the_battery_covers_every_kind():
    counts = {k: sum(c.kind == k for c in ALL) for k in range(1, 8)}
    assert len(ALL) >= 40 and len({c.id for c in ALL}) == len(ALL)
    assert all(counts[k] >= 1 for k in range(1, 8)), counts
