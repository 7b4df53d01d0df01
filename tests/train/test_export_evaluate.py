"""An exported generator loads in plain diffusers and samples in K steps; evaluate runs end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from .conftest import SIZE, kstep

PROMPTS = ["a red apple", "a blue car"]


def _perturb(gen, scale=0.3):
    with torch.no_grad():
        for i, p in enumerate(gen.parameters()):
            p.add_(scale * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))


@pytest.mark.parametrize("base", ["stabilityai/sd-turbo", "stable-diffusion-v1-5/stable-diffusion-v1-5"])
def test_exported_lora_loads_in_plain_diffusers_and_samples_in_k_steps(tiny_sd, tmp_path, base):
    """load_lora_weights + the exported scheduler + latents=z give the generator's own latent, to 1e-4."""
    import diffusers
    from diffusers import StableDiffusionPipeline

    from r0kit.diffusion import load
    from r0kit.testing.pipelines import SCHEDULER_CONFIGS, with_scheduler
    from r0kit_r0 import read_export

    folder = with_scheduler(tiny_sd, tmp_path / "base", SCHEDULER_CONFIGS[base])
    gen = kstep(load(str(folder), device="cpu"), steps=4, train="lora")
    _perturb(gen)
    export = gen.export(tmp_path / "export")
    assert (export / "pytorch_lora_weights.safetensors").is_file() and (export / "kstep.json").is_file()
    meta = read_export(export)
    assert meta["guidance_scale"] == 0.0 and meta["scheduler"] in meta["usage"]

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
    pipe.load_lora_weights(str(export), weight_name="pytorch_lora_weights.safetensors")  # as kstep.json's usage says
    pipe.scheduler = getattr(diffusers, meta["scheduler"]).from_pretrained(str(export), subfolder="scheduler")
    pipe.set_progress_bar_config(disable=True)
    base_pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
    base_pipe.scheduler = pipe.scheduler
    base_pipe.set_progress_bar_config(disable=True)
    noise = gen.noise_for_seeds([0])
    gen.eval()
    kw = dict(num_inference_steps=4, guidance_scale=0.0, output_type="latent", height=SIZE, width=SIZE)
    with torch.no_grad():
        ours = gen.sample(PROMPTS[:1], noise=noise).state["latents"]
        theirs = pipe(PROMPTS[0], latents=noise.clone(), **kw).images
        plain = base_pipe(PROMPTS[0], latents=noise.clone(), **kw).images
    assert pipe.scheduler.timesteps.tolist() == gen.timesteps.tolist() == meta["timesteps"]
    assert float((ours - plain).abs().max()) > 1e-2  # the LoRA matters ...
    assert float((ours - theirs).abs().max() / theirs.abs().max()) <= 1e-4  # ... and plain diffusers reproduces it


def test_exported_full_pipeline_loads_with_from_pretrained(tiny_model, tmp_path):
    from diffusers import StableDiffusionPipeline

    gen = kstep(tiny_model, steps=2, train="full")
    _perturb(gen, 0.01)
    folder = gen.export(tmp_path / "full")
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
    noise = gen.noise_for_seeds([3])
    gen.eval()
    with torch.no_grad():
        ours = gen.sample(PROMPTS[:1], noise=noise).images
        theirs = pipe(PROMPTS[0], latents=noise.clone(), num_inference_steps=2, guidance_scale=0.0,
                      output_type="pt", height=SIZE, width=SIZE).images
    torch.testing.assert_close(ours, theirs.float(), atol=2e-5, rtol=1e-4)


def test_evaluate_end_to_end(tiny_sd, tiny_model, tmp_path, capsys):
    from r0kit.cli import main
    from r0kit.outputs import save_png

    gen = kstep(tiny_model, steps=2, train="lora")
    _perturb(gen)
    export = gen.export(tmp_path / "export")
    images = tmp_path / "images"
    for i, p in enumerate(PROMPTS):
        save_png(images / f"{i}.png", torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)), {"prompt": p})
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "eval"
    rc = main(["evaluate", str(export), str(tiny_sd), str(images), "--prompts-file", str(prompts),
               "--reward", "colorfulness", "--held-out", "contrast", "--steps", "2", "--size", str(SIZE),
               "--device", "cpu", "--label", "R0", "--label", "base", "--output", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "colorfulness" in printed and "contrast*" in printed and "R0" in printed and "FID not computed: add --metric fid -M fid.reference=FOLDER" in printed
    # a progress bar per sampled row, on by default, on stderr (stdout holds the table, and may be a file)
    assert "sampling R0" in captured.err and "sampling base" in captured.err and "sampling" not in printed
    rows = list(csv.DictReader(open(out / "evaluation.csv")))
    assert len(rows) == 3 * len(PROMPTS)
    assert {r["model"] for r in rows} == {"R0", "base", "images"}
    summary = {r["model"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert set(summary["R0"]) >= {"colorfulness", "contrast*"}
    # the exported generator's scores are of its own samples, distinct from the base model's
    assert summary["R0"]["colorfulness"] != summary["base"]["colorfulness"]
    for label in ("R0", "base", "images"):
        assert (out / f"grid-{label}.png").is_file()
    # the manifest lists each file, row folders' included, so that --overwrite replaces only those
    import json

    listed = json.loads((out / "r0kit-run.json").read_text())["files"]
    assert "summary.csv" in listed and any(f.startswith("R0/") and f.endswith(".png") for f in listed)
    # the image-folder row scores exactly what score_folder scores
    from r0kit.score import score_folder

    ref = score_folder(images, ["colorfulness"]).means()["colorfulness"]
    assert float(summary["images"]["colorfulness"]) == pytest.approx(ref, rel=1e-5)


def test_evaluate_refuses_held_out_equal_to_trained(tmp_path):
    from r0kit.errors import OptionError
    from r0kit.evaluate import evaluate

    with pytest.raises(OptionError, match="held-out"):
        evaluate([str(tmp_path)], None, rewards=["contrast"], held_out=["contrast"], output=tmp_path / "o")


def test_labels_that_clean_to_one_folder_name_keep_their_rows_apart(tmp_path):
    """'a b' and 'a/b' both cleaned to a_b: the second row's grid and images (a generator's row) overwrote the
    first's; '..' named the parent folder. The row folder and the grid take one name, so the grids show it."""
    from r0kit.evaluate import evaluate
    from r0kit.outputs import save_png

    folders = []
    for k in range(3):
        f = tmp_path / f"images{k}"
        for i, p in enumerate(PROMPTS):
            save_png(f / f"{i}.png", torch.full((3, SIZE, SIZE), 0.2 + 0.3 * k), {"prompt": p})
        folders.append(str(f))
    out = tmp_path / "eval"
    res = evaluate(folders, None, rewards=["colorfulness"], labels=["a b", "a/b", ".."], output=out, progress=False)
    grids = [row.grid for row in res.rows]
    assert len(set(grids)) == 3 and all(g.parent == out and g.is_file() for g in grids)
    assert len({r["model"] for r in csv.DictReader(open(out / "evaluation.csv"))}) == 3


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True, "3"])
def test_guidance_follows_one_rule_in_evaluate_its_config_and_the_generators(tmp_path, bad):
    """evaluate refused 0 (documented as 'none' for turbo models) that optimize's generators accept."""
    from r0kit.diffusion import check_guidance_scale
    from r0kit.errors import OptionError
    from r0kit.evaluate import evaluate
    from r0kit.outputs import save_png
    from r0kit.train import EvaluateConfig

    images = tmp_path / "images"
    save_png(images / "0.png", torch.rand(3, SIZE, SIZE), {"prompt": "a"})
    res = evaluate([str(images)], None, rewards=["colorfulness"], guidance=0, output=tmp_path / "ok", progress=False)
    assert len(res.rows) == 1
    assert EvaluateConfig(prompts=["a"], guidance=0).guidance == 0
    rule = "must be a finite number >= 0"
    with pytest.raises(OptionError, match=rule):
        evaluate([str(images)], None, rewards=["colorfulness"], guidance=bad, output=tmp_path / "bad", progress=False)
    with pytest.raises(OptionError, match=rule):
        check_guidance_scale(bad)
    import r0kit

    with pytest.raises(OptionError, match=rule):
        r0kit.generator("noise", model="unused", guidance=bad)
    if not isinstance(bad, (bool, str)):
        with pytest.raises(Exception, match="guidance"):
            EvaluateConfig(prompts=["a"], guidance=bad)


_MINI_PRESET = Path(__file__).resolve().parents[2] / "r0kit" / "presets" / "mini.toml"


@pytest.mark.parametrize(
    "evaluate_table, message",
    [
        ('baselines = ["r0kit-mini@0"]', "must be a number of sampling steps"),
        ('baselines = ["/nonexistent/model"]', "does not exist"),
        ('metrics = ["nosuch"]', "unknown metric 'nosuch'"),
        ('held_out = ["nosuch"]', "unknown reward 'nosuch'"),
        ('metrics = ["mini_fid"]\nmetric_options = {mini_fid = {bogus = 1}}', "has no option 'bogus'"),
        ('metrics = ["mini_fid"]\nmetric_options = {mini_fid = {seed = -1}}', "mini_fid.seed must be an integer >= 0"),
        ('metrics = ["mini_diversity"]\nseeds = 1', "needs 2 images of each prompt; evaluate with --seeds 2"),
        ('prompts_file = "nope.txt"', "prompt file"),
    ],
)
def test_a_bad_evaluate_table_fails_before_training(tmp_path, monkeypatch, capsys, evaluate_table, message):
    """Each of these trained the generator first (minutes on the mini world) and failed after."""
    pytest.importorskip("peft")
    import r0kit.train
    from r0kit.cli import main

    monkeypatch.setattr(r0kit.train, "train", lambda *a, **k: pytest.fail("training started"))
    text = _MINI_PRESET.read_text().replace('"../mini/prompts/', f'"{_MINI_PRESET.parents[1] / "mini" / "prompts"}/')
    head, _, _ = text.partition("[evaluate]")
    body = {"prompts_file": f'prompts_file = "{_MINI_PRESET.parents[1] / "mini" / "prompts" / "heldout.txt"}"',
            "baselines": 'baselines = ["r0kit-mini@4"]', "seeds": "seeds = 2"}
    for line in evaluate_table.splitlines():
        body[line.split("=")[0].strip()] = line
    (tmp_path / "t.toml").write_text(head + "[evaluate]\n" + "\n".join(body.values()) + "\n")
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "--config", str(tmp_path / "t.toml"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert "[evaluate] table, checked before training" in err and message in err
    assert not (tmp_path / "r0kit-demo").exists()


def test_metric_needs_are_checked_before_any_sampling(tmp_path, monkeypatch):
    """diversity with one seed, and FID with one image, failed only after every row was sampled."""
    import r0kit.evaluate as E
    from r0kit.errors import OptionError

    monkeypatch.setattr(E, "_generate", lambda *a, **k: pytest.fail("sampling started"))
    common = dict(rewards=["colorfulness"], output=tmp_path / "o", progress=False)
    with pytest.raises(OptionError, match="'mini_diversity' needs 2 images of each prompt; evaluate with --seeds 2"):
        E.evaluate(["r0kit-mini@1"], ["a red circle"], metrics=["mini_diversity"], seeds=1, **common)
    with pytest.raises(OptionError, match="'mini_fid' needs at least 2 images; use more prompts or --seeds 2"):
        E.evaluate(["r0kit-mini@1"], ["a red circle"], metrics=["mini_fid"], seeds=1, **common)
    for bad in ({"seed": -1}, {"per_prompt": 0}, {"per_prompt": 1.5}):
        with pytest.raises(OptionError, match=f"mini_fid.{next(iter(bad))} must be an integer"):
            E.evaluate(["r0kit-mini@1"], ["a red circle"], metrics=["mini_fid"], metric_options={"mini_fid": bad}, seeds=2, **common)


def test_a_table_wider_than_the_console_is_turned_so_no_column_is_cut(tmp_path):
    """R0's table shape (a column per reward and metric) is kept where it fits; where rich would cut
    every column to an ellipsis (the demo's 14 columns in an 80-column terminal) it is printed turned,
    one row per column, with every value whole."""
    from rich.console import Console

    from r0kit.evaluate import EvalRow, Evaluation

    metrics = [f"mini_geneval/{c}" for c in ("object", "colour", "shape", "position", "size", "count", "relation")]
    rows = [
        EvalRow(label, "base", {"hpsv2": 0.5608, "clip": 60.61}, {}, [], [], metrics={m: 0.8125 for m in metrics})
        for label in ("r0kit-mini@4", "r0kit-mini@25", "r0kit-demo/export")
    ]
    ev = Evaluation(rows, ["hpsv2"], ["clip"], tmp_path / "e.csv", tmp_path / "s.csv", metrics=metrics)

    def shown(width):
        console = Console(width=width, record=True, file=open(Path(tmp_path / "out.txt"), "w"))
        console.print(ev.table(width))
        return console.export_text()

    narrow = shown(80)
    assert "…" not in narrow and max(len(line) for line in narrow.splitlines()) <= 80
    assert "mini_geneval/relation*" in narrow and "r0kit-demo/export" in narrow and "56.08" in narrow
    wide = shown(400)
    header = next(line for line in wide.splitlines() if "model" in line)
    assert "HPS" in header and "mini_geneval/relation*" in header  # the paper's shape where it fits
    # too narrow even turned (five sources, a long label, 40 columns): cells wrap, nothing is cut
    ev.rows = rows + [EvalRow("a_very_long_label_for_the_first_source", "base", {"hpsv2": 0.5, "clip": 60.0}, {}, [], [],
                              metrics={m: 0.8125 for m in metrics})] * 2
    tight = shown(40)
    assert "…" not in tight and max(len(line) for line in tight.splitlines()) <= 40
    cells = [r.label for r in ev.rows] + [title for _, title, _ in ev.columns()] + [f"{ev.value(r, key) * k:.4g}" for r in ev.rows for key, _, k in ev.columns()]
    assert sum(ch.isdigit() for ch in tight) == sum(ch.isdigit() for c in cells for ch in c)  # every digit shown, only wrapped


def test_tables_printed_to_a_pipe_or_file_are_not_cut_at_80_columns(monkeypatch):
    """Not a terminal: rich assumed 80 columns and cut a wide table; a file has no width."""
    import io

    from r0kit.commands._common import table_console

    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert table_console().width > 1000


def test_evaluate_no_progress_draws_no_bar(tiny_sd, tmp_path, capsys):
    from r0kit.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    rc = main(["evaluate", f"{tiny_sd}@1", "--prompts-file", str(prompts), "--reward", "colorfulness", "--size", str(SIZE),
               "--device", "cpu", "--label", "base", "--output", str(tmp_path / "eval"), "--no-progress"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "colorfulness" in captured.out and "sampling base" not in captured.out + captured.err


@pytest.mark.parametrize("metrics, noted", [({}, True), ({"mini_geneval": 0.5}, True), ({"fid": 3.0}, False), ({"mini_fid": 3.0}, False)])
def test_the_fid_hint_shows_only_when_no_fid_was_computed(tmp_path, metrics, noted):
    from r0kit.evaluate import FID_NOTE, EvalRow, _finish

    row = EvalRow("m", "images", {"contrast": 0.5}, {"contrast": [0.5]}, ["a.png"], ["p"], metrics=metrics)
    ev = _finish(tmp_path, [row], [], ["contrast"], ["contrast"])
    assert (FID_NOTE in ev.notes) is noted


def test_an_export_whose_plugin_is_not_loaded_is_named_not_read_as_images(tiny_model, tmp_path, monkeypatch, fresh_host):
    """With the generator's plugin kept out (R0KIT_LOAD_PLUGINS), its export folder is not a folder of
    images: the error says what it likely is and how to load the plugin."""
    from r0kit import plugins as plugins_mod
    from r0kit.errors import InputError
    from r0kit.evaluate import source_kind

    export = kstep(tiny_model, steps=2, train="lora").export(tmp_path / "export")
    assert source_kind(str(export)) == "generator"
    monkeypatch.setenv("R0KIT_LOAD_PLUGINS", "r0kit_analytic")
    plugins_mod.reset_host()
    fresh_host()
    with pytest.raises(InputError) as exc:
        source_kind(str(export))
    msg = str(exc.value)
    assert "not the export of a loaded generator plugin" in msg and "none is loaded" in msg
    assert "R0KIT_LOAD_PLUGINS='r0kit_analytic' is set" in msg and "r0kit_r0" in msg
    # a folder of images with a JSON beside them is still images
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "meta.json").write_text("{}")
    (tmp_path / "imgs" / "0.png").write_bytes(b"")
    assert source_kind(str(tmp_path / "imgs")) == "images"


def test_a_run_folder_and_a_mistyped_local_path_are_named(tiny_model, tmp_path, monkeypatch):
    """`evaluate run1` (the run, not its export) said to load a plugin; `evaluate run1/exprt` was taken
    for a hub id and waited on the network."""
    from r0kit.errors import InputError
    from r0kit.evaluate import source_kind

    kstep(tiny_model, steps=2, train="lora").export(tmp_path / "run1" / "export")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"'run1' is a training run's folder; pass its exported generator, 'run1/export'"):
        source_kind("run1")
    with pytest.raises(InputError, match=r"'run1/exprt' does not exist \(there is a local folder 'run1'"):
        source_kind("run1/exprt")
    assert source_kind("run1/export") == "generator"
    assert source_kind("some-org/some-model") == "base"  # a hub id stays one


def test_a_hub_miss_says_the_id_was_read_as_a_hub_id():
    from r0kit.weights import _how_to_fetch

    assert "'run9/export' was read as a hub id because no local folder of that name exists" in _how_to_fetch("run9/export", None, None)


def test_train_config_takes_a_preset_name_and_names_itself_when_missing(tmp_path, monkeypatch, capsys):
    """From any folder, `--train-config r0kit/presets/mini.toml` (the README's, from the repository
    root) was "config file ... does not exist" without naming the flag; a preset's name now works."""
    from r0kit.cli import main
    from r0kit.commands._common import train_config
    from r0kit.commands.optimize import preset_path

    monkeypatch.chdir(tmp_path)
    assert train_config(Path("mini")) == preset_path("mini", "train")
    assert main(["evaluate", "imgs", "--train-config", "no/such.toml", "-o", "ev"]) == 2
    err = capsys.readouterr().err
    assert "--train-config 'no/such.toml' does not exist" in err and "mini" in err


def test_the_table_marks_each_column_s_best_by_its_direction(tmp_path):
    """A newcomer could not tell from the demo's table who won: the best of each column is bold, the
    highest for rewards and accuracies, the lowest where the metric declares lower is better (FID)."""
    from r0kit.evaluate import EvalRow, Evaluation

    rows = [EvalRow("base@4", "base", {"hpsv2": 0.56}, {}, [], [], metrics={"fid": 4.2, "geneval": 0.075}),
            EvalRow("base@25", "base", {"hpsv2": 0.59}, {}, [], [], metrics={"fid": 2.9, "geneval": 0.0625}),
            EvalRow("R0", "generator", {"hpsv2": 0.60}, {}, [], [], metrics={"fid": 4.4, "geneval": 0.0625})]
    ev = Evaluation(rows, ["hpsv2"], [], tmp_path / "e.csv", tmp_path / "s.csv", metrics=["fid", "geneval"],
                    lower_is_better={"fid"})
    t = ev.table(400)
    cells = {col.header: list(col._cells) for col in t.columns}
    assert cells["HPS ×100"] == ["56", "59", "[bold]60[/bold]"]
    assert cells["fid*"] == ["4.2", "[bold]2.9[/bold]", "4.4"]  # lowest
    assert cells["geneval*"] == ["[bold]0.075[/bold]", "0.0625", "0.0625"]
    assert "bold: the best of each column (lowest for fid; highest for the rest)" in t.caption
    turned = ev.table(20)
    assert "best of each row" in turned.caption and "[bold]2.9[/bold]" in list(turned.columns[2]._cells)
    # one row has nothing to compare
    assert "bold" not in (Evaluation(rows[:1], ["hpsv2"], [], tmp_path / "e.csv", tmp_path / "s.csv").table(400).caption or "")


def test_fid_metrics_declare_lower_is_better():
    from r0kit.mini.metrics import FID

    assert FID.lower_is_better == ("fid",)


def test_an_export_s_row_is_named_by_its_run(tiny_model, tmp_path):
    """A standalone evaluate labelled a run's export "export", the demo's table "r0kit-demo/export":
    the same generator now has the same row name both ways."""
    from r0kit.evaluate import evaluate

    export = kstep(tiny_model, steps=2, train="lora").export(tmp_path / "run1" / "export")
    result = evaluate([str(export)], PROMPTS[:2], rewards=["colorfulness"], output=tmp_path / "ev", size=SIZE, device="cpu")
    assert [r.label for r in result.rows] == ["run1/export"]
