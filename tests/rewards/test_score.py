"""``r0kit score`` and :mod:`r0kit.score`: prompts from PNGs or a file, table, CSV, clear errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import r0kit
from r0kit.cli import main
from r0kit.errors import InputError
from r0kit.score import score_folder, score_tensor

PROMPTS = ["a photo of a cat", "a red house", "a blue sky"]


def write_pngs(folder, prompts=PROMPTS, size=(64, 48), with_prompt=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, p in enumerate(prompts):
        info = PngInfo()
        if with_prompt:
            info.add_text("prompt", p)
        Image.fromarray(rng.integers(0, 256, size=(*size[::-1], 3), dtype=np.uint8)).save(folder / f"img_{i:02d}.png", pnginfo=info)
    return folder


def test_score_folder_prompts_from_png_and_csv(assets, tmp_path, reward_host):
    folder = write_pngs(tmp_path / "imgs")
    out = tmp_path / "scores.csv"
    opts = {"hpsv2": assets.options("hpsv2"), "colorfulness": {}}
    table = score_folder(folder, ["hpsv2", "colorfulness"], options=opts, csv_path=out)
    assert table.prompts == PROMPTS and table.files == [f"img_{i:02d}.png" for i in range(3)]
    rows = list(csv.DictReader(out.open()))
    assert [r["prompt"] for r in rows] == PROMPTS
    assert [float(r["hpsv2"]) for r in rows] == pytest.approx(table.scores["hpsv2"], rel=1e-5)
    # the same numbers as the reward applied to the tensors directly
    from r0kit.score import load_image

    x = torch.stack([load_image(folder / f)[0] for f in table.files])
    direct = score_tensor(x, PROMPTS, [r0kit.reward("hpsv2", **assets.options("hpsv2"))])
    assert table.scores["hpsv2"] == pytest.approx(direct["hpsv2"].tolist(), rel=1e-5, abs=1e-6)


def test_cli_with_prompts_file_prints_table(assets, tmp_path, capsys, reward_host):
    folder = write_pngs(tmp_path / "imgs", with_prompt=False)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "s.csv"
    rc = main(["score", str(folder), "--reward", "contrast", "--reward", "clip", "--prompts-file", str(prompts), "-o", str(out),
               "-R", f"clip.model='{assets.options('clip')['model']}'", "-R", f"clip.checkpoint='{assets.open_clip_ckpt}'",
               "-R", "clip.device=cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "img_00.png" in text and "mean" in text and "clip" in text
    assert out.is_file() and len(list(csv.DictReader(out.open()))) == 3


def test_count_mismatch_and_missing_prompts(tmp_path, capsys, reward_host):
    folder = write_pngs(tmp_path / "imgs", with_prompt=False)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("only one\n")
    with pytest.raises(InputError, match="1 prompt\\(s\\) for 3 image\\(s\\)"):
        score_folder(folder, ["contrast"], prompts_file=prompts)
    rc = main(["score", str(folder), "--reward", "clip"])
    assert rc == 2 and "no 'prompt' PNG text chunk" in capsys.readouterr().err
    # a reward that reads no prompt needs none
    assert len(score_folder(folder, ["contrast"]).scores["contrast"]) == 3


def test_unreadable_image_is_named(tmp_path, reward_host):
    folder = write_pngs(tmp_path / "imgs")
    (folder / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="broken.png"):
        score_folder(folder, ["contrast"])


def test_channel_and_range_errors_through_the_api(tmp_path, reward_host):
    terms = [r0kit.reward("contrast")]
    with pytest.raises(InputError, match="3 channels"):
        score_tensor(torch.rand(1, 4, 8, 8), ["x"], terms)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        score_tensor(torch.rand(1, 3, 8, 8) * 255, ["x"], terms)


def test_option_parsing_errors(tmp_path, capsys, reward_host):
    folder = write_pngs(tmp_path / "imgs")
    assert main(["score", str(folder), "--reward", "contrast", "-R", "novalue"]) == 2
    assert "--reward-option 'novalue': expected NAME.KEY=VALUE" in capsys.readouterr().err
    assert main(["score", str(folder), "--reward", "contrast", "-R", "clip.device=cpu"]) == 2
    assert "no --reward selects" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "nope"), "--reward", "contrast"]) == 2


def test_a_run_folder_scores_its_images_and_not_r0kit_s_figures(tmp_path, reward_host):
    """optimize writes curves.png and contact_sheet.png beside the images; they were scored as images."""
    from r0kit.outputs import contact_sheet, plot_curves
    from r0kit.score import list_images

    folder = write_pngs(tmp_path / "run")
    plot_curves(folder / "curves.png", [{"step": 0, "values": {"total": [1.0]}}, {"step": 1, "values": {"total": [2.0]}}])
    contact_sheet(folder / "contact_sheet.png", torch.rand(2, 3, 8, 8))
    assert [p.name for p in list_images(folder)] == [f"img_{i:02d}.png" for i in range(3)]
    table = score_folder(folder, ["colorfulness"])
    assert table.files == [f"img_{i:02d}.png" for i in range(3)] and table.prompts == PROMPTS
    only_figures = tmp_path / "figures"
    only_figures.mkdir()
    plot_curves(only_figures / "curves.png", [{"step": 0, "values": {"total": [1.0]}}])
    with pytest.raises(InputError, match=r"holds no images .*only r0kit's figures: curves.png"):
        list_images(only_figures)
