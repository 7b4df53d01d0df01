"""Image files as people have them: every mode PIL opens, every kind of transparency, EXIF orientation.

The rule (``r0kit.score.load_image``): EXIF orientation first; any transparency is composited onto
white, as transformers' ``convert_to_rgb`` does (PickScore's processor); 16-bit and float greys are
scaled, not clipped; every other mode is PIL's ``convert("RGB")``, as open_clip and BLIP do.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from r0kit.cli import main
from r0kit.errors import InputError
from r0kit.score import load_image, score_folder

RNG = np.random.default_rng(0)
H, W = 6, 10


def _rgb(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255


def _on_white(im: Image.Image) -> torch.Tensor:
    """What transformers' convert_to_rgb gives (composited onto white), computed independently."""
    rgba = np.asarray(im.convert("RGBA"), dtype=np.float64) / 255.0
    rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
    return torch.from_numpy(rgb).permute(2, 0, 1).float()


def _grey(bits: int = 8, dtype=np.uint8):
    return RNG.integers(0, 2**bits, (H, W), dtype=dtype)


# mode -> (how to write the file, file name)
def _files(tmp_path):
    rgb = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    alpha[0, 0], alpha[0, 1] = 0, 255  # a fully transparent and a fully opaque pixel
    out = {}

    def save(name, im, **kw):
        path = tmp_path / name
        im.save(path, **kw)
        out[name] = path

    save("1.png", Image.fromarray(_grey(1) * 255).convert("1"))
    save("L.png", Image.fromarray(_grey()))
    save("P.png", Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16))
    p = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("P_tRNS.png", p, transparency=int(np.asarray(p)[0, 0]))
    save("P_tRNS.gif", p, transparency=int(np.asarray(p)[0, 0]))
    save("PA.tif", _pa(p, alpha))
    grey = _grey()
    grey[0, 0] = 7
    save("L_tRNS.png", Image.fromarray(grey), transparency=7)
    save("LA.png", Image.fromarray(np.stack([_grey(), alpha], -1), mode="LA"))
    save("RGB_tRNS.png", Image.fromarray(rgb), transparency=tuple(int(v) for v in rgb[0, 0]))
    save("RGBA.png", Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA"))
    save("RGBA.webp", Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA"), lossless=True)
    save("CMYK.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    save("CMYK.tif", Image.fromarray(rgb).convert("CMYK"))
    save("YCbCr.tif", Image.fromarray(rgb).convert("YCbCr"))
    save("LAB.tif", Image.fromarray(rgb).convert("LAB"))
    save("I16.png", Image.fromarray(_grey(16, np.uint16)))
    grey16 = _grey(16, np.uint16)
    grey16[0, 0] = 1234
    save("I16_tRNS.png", Image.fromarray(grey16), transparency=1234)
    save("I.tif", Image.fromarray(_grey(16, np.int32).astype(np.int32)))
    save("F.tif", Image.fromarray(RNG.random((H, W), dtype=np.float32) * 1.2 - 0.1))
    return out


def _pa(p: Image.Image, alpha: np.ndarray) -> Image.Image:
    pa = p.convert("PA")
    pa.putalpha(Image.fromarray(alpha))
    return pa


def test_every_mode_is_read(tmp_path):
    files = _files(tmp_path)
    for name, path in files.items():
        with Image.open(path) as im:
            im.load()
            mode, info = im.mode, dict(im.info)
            expected = None
            if mode in ("1", "L", "P", "RGB", "CMYK", "YCbCr", "LAB") and info.get("transparency") is None:
                expected = _rgb(im)  # what open_clip and BLIP get: PIL's convert("RGB")
            elif mode in ("I;16", "I"):
                grey = np.asarray(im, dtype=np.float64) / 65535.0
                if "transparency" in info:
                    grey = np.where(np.asarray(im) == info["transparency"], 1.0, grey)
                expected = torch.from_numpy(np.repeat(grey[None], 3, 0)).float()
            elif mode == "F":
                expected = torch.from_numpy(np.repeat(np.clip(np.asarray(im), 0, 1)[None], 3, 0)).float()
            else:  # an alpha channel or a transparent colour: onto white
                expected = _on_white(im)
        x, _ = load_image(path)
        assert x.shape == (3, H, W) and x.dtype == torch.float32, name
        assert float(x.min()) >= 0 and float(x.max()) <= 1, name
        torch.testing.assert_close(x, expected, atol=1 / 255 + 1e-6, rtol=0, msg=lambda m: f"{name} ({mode}): {m}")


def test_transparency_matches_transformers_convert_to_rgb(tmp_path):
    transforms = pytest.importorskip("transformers.image_transforms")
    files = _files(tmp_path)
    for name in ("P_tRNS.png", "P_tRNS.gif", "PA.tif", "L_tRNS.png", "LA.png", "RGB_tRNS.png", "RGBA.png", "RGBA.webp"):
        with Image.open(files[name]) as im:
            im.load()
            theirs = torch.from_numpy(np.asarray(transforms.convert_to_rgb(im, return_numpy=True)).copy()).permute(2, 0, 1)
        ours = load_image(files[name])[0]
        assert torch.equal((ours * 255).round().to(torch.uint8), theirs.to(torch.uint8)), name
        assert float(ours[:, 0, 0].min()) == 1.0, f"{name}: the transparent pixel is not white"


def test_exif_orientation_is_applied(tmp_path):
    rgb = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    im.save(tmp_path / "rotated.png", exif=exif)
    x, _ = load_image(tmp_path / "rotated.png")
    assert x.shape == (3, W, H)
    expected = torch.from_numpy(np.rot90(rgb, k=-1).copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(x, expected)


def test_score_reads_every_mode_and_reports_a_broken_file(tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    files = _files(tmp_path)
    for path in files.values():
        path.rename(folder / path.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(InputError, match="broken.jpg.*--skip-bad"):
        score_folder(folder, ["contrast"])
    table = score_folder(folder, ["contrast"], skip_bad=True)
    assert len(table.files) == len(files) and list(table.skipped) == ["broken.jpg"]
    assert all(np.isfinite(table.scores["contrast"]))
    out = tmp_path / "scores.csv"
    assert main(["score", str(folder), "-r", "contrast", "--skip-bad", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 image(s)" in err and "broken.jpg" in err
    assert len(out.read_text().splitlines()) == 1 + len(files)  # the header and every readable image
