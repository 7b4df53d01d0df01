"""Train every model of the mini world on the CPU, seeded, and save them in their real formats.

``python -m r0kit.mini build [--out DIR]`` runs the stages in order:

=============  ==============================================================  ======================
stage          what                                                            format
=============  ==============================================================  ======================
prompts        ``train.txt`` (the base's captions), ``all.txt`` (R0's           text, one prompt a line
               training prompts) and ``heldout.txt`` (the evaluation set)
tokenizer      CLIP BPE tokenizer whose merges spell every grammar word         ``transformers.CLIPTokenizer``
clip           open_clip ViT trained contrastively on the world's captions     open_clip hub layout
hps            that CLIP fine-tuned on preference pairs (HPS v2's pair loss)   HPS checkpoint (``{"state_dict"}``)
aesthetic      MLP head on the CLIP image embedding: clean over degraded       LAION aesthetic predictor
judge          CNN feature network for FID and diversity (never optimized)     safetensors
vae            AutoencoderKL, 32 px -> 8×8×4 latents                            diffusers
unet           the CLIP's text tower cut to its embeddings as the text         diffusers, transformers
               encoder, then UNet2DConditionModel, ε-prediction diffusion
               loss (Min-SNR-5 weighted), CFG dropout
pipeline       the Stable Diffusion pipeline around them                       ``DiffusionPipeline``
=============  ==============================================================  ======================

After a full build it writes ``checksums.json`` (sha256 of every file) and ``build.json`` (the settings
and each stage's seconds). The default settings take about 40 minutes on 2 CPU cores; ``--quick``
runs every stage for a few steps (``Settings.quick()``, which the tests build with). Every random
draw comes from generators seeded by ``--seed`` and torch runs with a fixed
number of threads, so the same command on the same platform writes the same
files.

Which scenes each model learns from: the base UNet only from the world's ``"train"`` split, so the
held-out colour-shape pairs test its compositional generalization (as GenEval tests SD's). Everything
else learns from every pair (``"all"`` scenes), as SD's VAE and the CLIP, HPS and aesthetic models were
trained on far more than the generator's captions: with the rewards trained on the ``"train"`` split
too, they ranked a cyan circle's image under "a cyan square" above "a cyan circle" (on 400 held-out
scenes the CLIP preferred the right shape word 34% of the time, against 81% on training scenes, by
:func:`caption_accuracy`), so
reward maximization pushed held-out prompts away from their shapes. The VAE and the judge's feature
network are unconditional and see every pair, as SD's VAE and FID's Inception do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from r0kit.mini import formats
from r0kit.mini import world as W

log = logging.getLogger("r0kit.mini.build")

STAGES: tuple[str, ...] = ("prompts", "tokenizer", "clip", "hps", "aesthetic", "judge", "vae", "unet", "pipeline")
#: The folder the committed models live in.
MODELS = Path(__file__).resolve().parent / "models"
#: Model folders, relative to the models folder (see r0kit.weights' short names).
LAYOUT = {"pipeline": "pipeline", "clip": "clip", "hps": "hps", "aesthetic": "aesthetic", "judge": "judge"}
HPS_FILE = "HPS_v2.1_compressed.pt"
AESTHETIC_FILE = "aesthetic-model.pth"


@dataclass
class Settings:
    """Steps, batch sizes and learning rates of every stage (``--quick`` scales the steps down)."""

    seed: int = 0
    threads: int = 2
    images: int = 40_000
    clip_steps: int = 700
    clip_batch: int = 128
    clip_lr: float = 1e-3
    hps_steps: int = 300
    hps_batch: int = 64
    hps_lr: float = 1e-4
    aesthetic_steps: int = 1500
    aesthetic_images: int = 6000
    judge_steps: int = 400
    judge_batch: int = 128
    vae_steps: int = 1300
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_foreground_weight: float = 25.0
    unet_steps: int = 2000
    unet_batch: int = 128
    unet_lr: float = 2e-3
    unet_channels: tuple[int, ...] = (32, 64, 128)
    vae_channels: tuple[int, ...] = (16, 32, 64)
    cfg_dropout: float = 0.1
    ema_decay: float = 0.995
    snr_gamma: float | None = 5.0
    text_layers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def kind(key: str) -> tuple[type, bool]:
        """The type of setting ``key`` (``tuple`` for the channel lists) and whether it may be ``None``, from its annotation."""
        hint = typing.get_type_hints(Settings)[key]
        args = typing.get_args(hint)
        nullable = type(None) in args
        base = next(a for a in args if a is not type(None)) if nullable else (typing.get_origin(hint) or hint)
        return base, nullable

    def problems(self) -> list[str]:
        """What is wrong with these settings, as ``--set`` would be told (empty when they can build)."""
        wrong_type = []
        for k in asdict(self):
            v = getattr(self, k)
            base, nullable = Settings.kind(k)
            if (v is None and nullable) or base in (tuple, dict):
                continue
            if isinstance(v, bool) or not isinstance(v, int if base is int else (int, float)):
                wrong_type.append(f"{k} must be a number{' (a whole one)' if base is int else ''}, got {v!r}")
        if wrong_type:
            return wrong_type
        ints = [k for k in asdict(self) if Settings.kind(k)[0] is int]
        out = [f"{k} must be >= 1, got {getattr(self, k)}" for k in ints if k not in ("seed", "text_layers") and getattr(self, k) < 1]
        if self.seed < 0:
            out.append(f"seed must be >= 0, got {self.seed}")
        out += [f"{k} must be > 0, got {getattr(self, k)}" for k in ("clip_lr", "hps_lr", "vae_lr", "unet_lr") if not getattr(self, k) > 0]
        if not 0 <= self.ema_decay < 1:
            out.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.cfg_dropout < 1:
            out.append(f"cfg_dropout must be in [0, 1), got {self.cfg_dropout}")
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            out.append(f"snr_gamma must be > 0 or null (no weighting), got {self.snr_gamma}")
        if not 0 <= self.text_layers <= formats.CLIP_LAYERS[1]:
            out.append(f"text_layers must be in [0, {formats.CLIP_LAYERS[1]}] (0: the text tower's embeddings only; "
                       f"{formats.CLIP_LAYERS[1]}: the whole tower), got {self.text_layers}")
        return out

    @classmethod
    def quick(cls, **kw: Any) -> Settings:
        return cls(
            images=600, clip_steps=3, clip_batch=16, hps_steps=2, hps_batch=8, aesthetic_steps=3, aesthetic_images=32,
            judge_steps=2, judge_batch=16, vae_steps=2, vae_batch=8, unet_steps=2, unet_batch=8, **kw,
        )


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
@dataclass
class Data:
    """Rendered scenes: ``images`` ``[N, 3, 32, 32]`` uint8, their scenes and prompts (``"all"`` scenes by default)."""

    scenes: list[W.Scene]
    images: torch.Tensor
    prompts: list[str]

    @classmethod
    def make(cls, n: int, seed: int, split: W.Split = "all") -> Data:
        rng = np.random.default_rng(seed)
        scenes = [W.sample_scene(rng, split) for _ in range(n)]
        images = torch.from_numpy((W.render_batch(scenes) * 255 + 0.5).astype(np.uint8))
        return cls(scenes, images, [s.prompt for s in scenes])

    def train_split(self) -> Data:
        """The scenes of the world's ``"train"`` split (no held-out colour-shape pair): what the base UNet learns from."""
        keep = [i for i, sc in enumerate(self.scenes) if not sc.held_out]
        return Data([self.scenes[i] for i in keep], self.images[keep], [self.prompts[i] for i in keep])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        return self.images[idx].float() / 255.0, [self.prompts[i] for i in idx.tolist()]


def _clip_normalize(x: torch.Tensor) -> torch.Tensor:
    from r0kit.images import CLIP_MEAN, CLIP_STD

    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(total - warmup, 1)
    return base * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


class _Progress:
    def __init__(self, stage: str, total: int) -> None:
        self.stage, self.total, self.t0, self.last = stage, total, time.time(), 0.0

    def __call__(self, step: int, **values: float) -> None:
        now = time.time()
        if step + 1 == self.total or now - self.last > 10:
            self.last = now
            vals = " ".join(f"{k}={v:.4g}" for k, v in values.items())
            log.info("%s %d/%d %s (%.0fs)", self.stage, step + 1, self.total, vals, now - self.t0)


# ---------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------
#: The prompt files the presets use, beside the models folder.
PROMPTS = Path(__file__).resolve().parent / "prompts"


def build_prompts(folder: Path, seed: int) -> Path:
    """The world's prompt files, drawn as the world draws them:

    - ``train.txt``: 3000 training-split prompts (the base UNet's captions: no held-out colour-shape pair);
    - ``heldout.txt``: the balanced held-out evaluation set of :func:`r0kit.mini.world.evaluation_prompts`;
    - ``all.txt``: 3000 prompts over every colour-shape pair, none of them one of ``heldout.txt``'s. R0
      trains on these: a generator trained by rewards needs prompts, not images, so it can learn the
      pairs its base never saw an image of from rewards that know them, and be judged on prompts it
      never trained on.
    """
    from r0kit.io import write_text

    folder.mkdir(parents=True, exist_ok=True)
    heldout = W.evaluation_prompts("heldout")
    write_text(folder / "train.txt", "\n".join(W.prompts(3000, "train", seed=seed)) + "\n")
    write_text(folder / "heldout.txt", "\n".join(heldout) + "\n")
    evaluated = set(heldout)
    drawn = [p for p in W.prompts(4000, "all", seed=seed + 1) if p not in evaluated]
    write_text(folder / "all.txt", "\n".join(drawn[:3000]) + "\n")
    return folder


def build_tokenizer(out: Path) -> Path:
    return formats.write_tokenizer(out / "tokenizer", W.vocabulary())


def _load_open_clip(folder: Path) -> tuple[torch.nn.Module, Any]:
    import open_clip

    class _NoRandomInitNote(logging.Filter):
        # open_clip logs "initialized randomly" for load_weights=False; the callers load the weights next
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).startswith("No pretrained weights loaded")

    note = _NoRandomInitNote()
    logging.getLogger().addFilter(note)
    try:
        model = open_clip.create_model("local-dir:" + str(folder), load_weights=False)
    finally:
        logging.getLogger().removeFilter(note)
    return model, open_clip.get_tokenizer("local-dir:" + str(folder))


def _write_clip_folder(folder: Path, tokenizer_dir: Path, cfg: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in tokenizer_dir.iterdir():
        shutil.copy2(f, folder / f.name)
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))


def _text_targets(prompts: Sequence[str]) -> torch.Tensor:
    """Soft targets over a batch: identical prompts are all positives."""
    same = torch.tensor([[a == b for b in prompts] for a in prompts], dtype=torch.float32)
    return same / same.sum(1, keepdim=True)


def build_clip(out: Path, data: Data, s: Settings) -> Path:
    """Contrastive CLIP training: symmetric InfoNCE, with two captions each image contradicts as extra
    hard negatives (another colour, shape, position, size, count, or the relation turned around).

    The second negative contradicts where things are whenever the caption says so (another position,
    the relation turned around): a random pick rarely lands on the spatial attribute, and a CLIP whose
    captions never named a wrong position (a fault of the contradiction sampler, since fixed) preferred a
    training scene's caption over its position-swapped one 60% of the time. With a spatial negative for
    every caption that states where things are it does 73% of the time; relations stay near chance at
    this size, as they do for real CLIP models (:func:`caption_accuracy` logs both per attribute).
    """
    from safetensors.torch import save_file

    from transformers import CLIPTokenizer

    tok_dir = out / "tokenizer"
    vocab = len(CLIPTokenizer.from_pretrained(str(tok_dir)).get_vocab())
    cfg = formats.open_clip_config(vocab, image_size=W.RESOLUTION)
    folder = out / LAYOUT["clip"]
    _write_clip_folder(folder, tok_dir, cfg)
    torch.manual_seed(s.seed + 1)
    model, tokenize = _load_open_clip(folder)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=s.clip_lr, weight_decay=0.1, betas=(0.9, 0.98))
    rng = np.random.default_rng(s.seed + 1)
    gen = torch.Generator().manual_seed(s.seed + 1)
    progress = _Progress("clip", s.clip_steps)
    for step in range(s.clip_steps):
        _set_lr(opt, _cosine_lr(step, s.clip_steps, s.clip_lr, max(1, s.clip_steps // 20)))
        idx = torch.randint(len(data.prompts), (s.clip_batch,), generator=gen)
        images, prompts = data.batch(idx)
        scenes = [data.scenes[i] for i in idx.tolist()]
        negatives = [W.contradicting_prompt(sc, rng) for sc in scenes]
        negatives += [W.contradicting_prompt(sc, rng, W.spatial_attribute(sc)) for sc in scenes]
        img = F.normalize(model.encode_image(_clip_normalize(images)), dim=-1)
        txt = F.normalize(model.encode_text(tokenize(prompts + negatives)), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T  # [B, 2B]
        target = _text_targets(prompts)
        loss_i = -(F.pad(target, (0, len(negatives))) * logits.log_softmax(-1)).sum(-1).mean()
        loss_t = -(target * logits[:, : len(prompts)].T.log_softmax(-1)).sum(-1).mean()
        loss = 0.5 * (loss_i + loss_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress(step, loss=float(loss), scale=float(scale))
    model.eval()
    log.info("clip: caption-vs-contradiction accuracy %s", caption_accuracy(model, tokenize, s.seed))
    save_file(_half(model.state_dict()), str(folder / "open_clip_model.safetensors"))
    return folder


@torch.no_grad()
def caption_accuracy(model: torch.nn.Module, tokenize: Any, seed: int, n: int = 400) -> dict[str, float]:
    """How often the CLIP scores a scene's caption above a caption contradicting one attribute, per split
    (``"train"``, ``"heldout"``) and attribute (``"heldout/position"``, ...); 0.5 is chance."""
    out = {}
    for split in ("train", "heldout"):
        rng = np.random.default_rng(seed + 100)
        scenes = [W.sample_scene(rng, split) for _ in range(n)]  # type: ignore[arg-type]
        img = F.normalize(model.encode_image(_clip_normalize(torch.from_numpy(W.render_batch(scenes)))), dim=-1)
        good = (img * F.normalize(model.encode_text(tokenize([sc.prompt for sc in scenes])), dim=-1)).sum(-1)
        hits: dict[str, list[float]] = {}
        for attribute in ("colour", "shape", "position", "size", "count", "relation"):
            rows = [i for i, sc in enumerate(scenes) if attribute in W.attributes(sc)]
            wrong = [W.contradicting_prompt(scenes[i], rng, attribute) for i in rows]
            bad = (img[rows] * F.normalize(model.encode_text(tokenize(wrong)), dim=-1)).sum(-1)
            hits[attribute] = (good[rows] > bad).float().tolist()
        out[split] = round(float(np.mean([h for v in hits.values() for h in v])), 3)
        out.update({f"{split}/{k}": round(float(np.mean(v)), 3) for k, v in hits.items()})
    return out


def _half(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous() for k, v in sd.items()}


def _loaded_clip(out: Path) -> tuple[torch.nn.Module, Any]:
    from safetensors.torch import load_file

    folder = out / LAYOUT["clip"]
    model, tokenize = _load_open_clip(folder)
    sd = load_file(str(folder / "open_clip_model.safetensors"))
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    return model.eval(), tokenize


def _preference_pair(scene: W.Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(preferred, rejected) images for the scene's prompt: the rejected one is wrong (45% any stated
    attribute, 15% the shape, which a small CLIP reads least) or degraded (40%, :data:`world.DEGRADATIONS`)."""
    good = W.render(scene)
    u = rng.random()
    if u < 0.6:
        bad = W.render(W.mutate(scene, rng, attribute="shape" if u >= 0.45 else None))
    else:
        bad = W.degrade(good, rng, float(rng.uniform(0.2, 1.0)))
    return good, bad


def build_hps(out: Path, data: Data, s: Settings) -> Path:
    """HPS v2's recipe at this scale: fine-tune the CLIP on preference pairs with the pair cross-entropy
    over ``logit_scale · cos(image, prompt)``; saved as HPS checkpoints are (``{"state_dict": ...}``, fp16)."""
    model, tokenize = _loaded_clip(out)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=s.hps_lr, weight_decay=0.05)
    rng = np.random.default_rng(s.seed + 2)
    gen = torch.Generator().manual_seed(s.seed + 2)
    progress = _Progress("hps", s.hps_steps)
    for step in range(s.hps_steps):
        _set_lr(opt, _cosine_lr(step, s.hps_steps, s.hps_lr, max(1, s.hps_steps // 10)))
        idx = torch.randint(len(data.prompts), (s.hps_batch,), generator=gen).tolist()
        pairs = [_preference_pair(data.scenes[i], rng) for i in idx]
        images = torch.from_numpy(np.stack([p for pair in pairs for p in pair])).permute(0, 3, 1, 2)
        img = F.normalize(model.encode_image(_clip_normalize(images)), dim=-1).view(len(idx), 2, -1)
        txt = F.normalize(model.encode_text(tokenize([data.prompts[i] for i in idx])), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * (img * txt[:, None]).sum(-1)  # [B, 2]
        loss = F.cross_entropy(logits, torch.zeros(len(idx), dtype=torch.long))
        acc = float((logits[:, 0] > logits[:, 1]).float().mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress(step, loss=float(loss), pair_acc=acc)
    folder = out / LAYOUT["hps"]
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": _half(model.eval().state_dict())}, str(folder / HPS_FILE))
    return folder


def build_aesthetic(out: Path, s: Settings) -> Path:
    """The LAION aesthetic predictor's layout: a transformers CLIP (the world's CLIP, converted) and an MLP
    (``layers.{0,2,4,6,7}``) on its L2-normalized image embedding, regressed to 7 for clean renders and
    ``7 − 5·severity`` for degraded ones."""
    from safetensors.torch import save_file
    from transformers import CLIPTokenizer

    from r0kit.backbones.heads import ScoreMLP

    clip, _ = _loaded_clip(out)
    cfg = json.loads((out / LAYOUT["clip"] / "open_clip_config.json").read_text())
    hf = formats.openclip_to_hf(clip, cfg, CLIPTokenizer.from_pretrained(str(out / "tokenizer")))
    folder = out / LAYOUT["aesthetic"]
    folder.mkdir(parents=True, exist_ok=True)
    hf.config.save_pretrained(str(folder))
    save_file(_half(hf.state_dict()), str(folder / "model.safetensors"))
    formats.write_preprocessor_config(folder, W.RESOLUTION)
    rng = np.random.default_rng(s.seed + 3)
    images, targets = [], []
    for _ in range(s.aesthetic_images):
        img = W.render(W.sample_scene(rng, "all"))
        if rng.random() < 0.35:
            images.append(img)
            targets.append(7.0)
        else:
            sev = float(rng.uniform(0.05, 1.0))
            images.append(W.degrade(img, rng, sev))
            targets.append(7.0 - 5.0 * sev)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    with torch.no_grad():
        emb = torch.cat([F.normalize(formats.image_embeds(hf, _clip_normalize(c)), dim=-1) for c in x.split(256)])
    y = torch.tensor(targets).unsqueeze(1)
    torch.manual_seed(s.seed + 3)
    head = ScoreMLP(emb.shape[1])
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(s.seed + 3)
    progress = _Progress("aesthetic", s.aesthetic_steps)
    for step in range(s.aesthetic_steps):
        idx = torch.randint(len(y), (256,), generator=gen)
        loss = F.mse_loss(head(emb[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress(step, mse=float(loss))
    torch.save(_half(head.eval().state_dict()), str(folder / AESTHETIC_FILE))
    return folder


def build_judge(out: Path, data: Data, s: Settings) -> Path:
    """The judge's feature network (FID and diversity): a CNN classifying what a scene holds."""
    from safetensors.torch import save_file

    from r0kit.mini.features import FeatureNet, scene_labels

    torch.manual_seed(s.seed + 4)
    net = FeatureNet()
    net.train()
    labels = scene_labels(data.scenes)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(s.seed + 4)
    progress = _Progress("judge", s.judge_steps)
    for step in range(s.judge_steps):
        _set_lr(opt, _cosine_lr(step, s.judge_steps, 2e-3, max(1, s.judge_steps // 20)))
        idx = torch.randint(len(data.prompts), (s.judge_batch,), generator=gen)
        images, _ = data.batch(idx)
        loss = net.loss(images, {k: v[idx] for k, v in labels.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress(step, loss=loss.item())
    folder = out / LAYOUT["judge"]
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_half(net.eval().state_dict()), str(folder / "features.safetensors"))
    (folder / "config.json").write_text(json.dumps(net.config(), indent=2))
    return folder


def vae_config(channels: Sequence[int] = (16, 32, 64)) -> dict[str, Any]:
    """The world's ``AutoencoderKL``: 32 px images to 8×8×4 latents (downsampling by 4)."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=tuple(channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=W.RESOLUTION,
    )


def build_vae(out: Path, data: Data, s: Settings) -> Path:
    """Reconstruction (L1 + MSE) with SD's small KL weight; ``scaling_factor`` is 1/std of the latents, as SD's was set.

    Two choices differ from SD's VAE recipe, both measured on this world (1200 steps, batch 32, 2 CPU threads,
    the judge on 64 reconstructions): the objects cover a few percent of each image, so with a plain per-pixel
    loss ``AutoencoderKL`` spends its steps on the background and returns colourless blobs (L1 0.045, judge 6%);
    weighting object pixels (those more than 0.15 from the image's median colour) ``vae_foreground_weight``
    times gives L1 0.028 and judge 64%. The decoder is trained on the posterior mean: with SD's KL weight of
    1e-6 the posterior's spread is negligible anyway, and sampling it only slowed learning here.
    """
    from diffusers import AutoencoderKL

    torch.manual_seed(s.seed + 5)
    vae = AutoencoderKL(**vae_config(s.vae_channels))
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=s.vae_lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(s.seed + 5)
    progress = _Progress("vae", s.vae_steps)
    for step in range(s.vae_steps):
        _set_lr(opt, _cosine_lr(step, s.vae_steps, s.vae_lr, max(1, s.vae_steps // 20)))
        idx = torch.randint(len(data.prompts), (s.vae_batch,), generator=gen)
        x = data.images[idx].float() / 127.5 - 1
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.mean).sample
        background = x.flatten(2).median(dim=2).values[:, :, None, None]
        weight = 1 + s.vae_foreground_weight * ((x - background).abs().amax(1, keepdim=True) > 0.15).float()
        err = (rec - x).abs() + (rec - x) ** 2
        loss = (weight * err).mean() / weight.mean() + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress(step, loss=loss.item())
    vae.eval()
    with torch.no_grad():
        idx = torch.arange(min(2048, len(data.prompts)))
        z = torch.cat([vae.encode(data.images[c].float() / 127.5 - 1).latent_dist.mean for c in idx.split(256)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    folder = out / "_vae"
    vae.to(torch.float16).save_pretrained(str(folder))
    return folder


def unet_config(cross_attention_dim: int, channels: Sequence[int]) -> dict[str, Any]:
    """The world's ``UNet2DConditionModel`` on 8×8×4 latents (SD 1.5's block layout, three levels)."""
    return dict(
        sample_size=W.RESOLUTION // 4,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=tuple(channels),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def scheduler_config() -> dict[str, Any]:
    """Stable Diffusion 1.5's noise schedule, with trailing spacing so that few-step sampling starts at t = 999."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_spacing="trailing",
        steps_offset=1,
    )


def build_unet(out: Path, data: Data, s: Settings) -> Path:
    """The ordinary ε-prediction diffusion loss on VAE latents, text from the frozen pipeline text encoder
    (:func:`build_text_encoder`), ``cfg_dropout`` (10%) empty prompts (for classifier-free guidance), an EMA
    of the weights saved.

    ``snr_gamma`` weights each timestep's loss by ``min(SNR, γ) / SNR`` (Min-SNR-γ, Hang et al. 2023,
    "Efficient Diffusion Training via Min-SNR Weighting Strategy"; diffusers' ``train_text_to_image.py
    --snr_gamma``), which moves the loss off the nearly clean timesteps and onto those where the layout
    and shapes are decided; ``None`` is the unweighted loss.

    ``unet_lr`` is 2e-3, with the cosine schedule and gradient clipping at 1. At 5e-4 the same 2000 steps
    gave a base that drew a circle-like blob for every shape: at 25 steps, CFG 3, on 96 single-object
    training prompts the judge's accuracy was 0.43 at 5e-4 and 0.93 at 2e-3; in the demo's table (the 40
    held-out prompts, 4 steps, 6 seeds) 0.100 and 0.438.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import compute_snr
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(out / "tokenizer"))
    text = CLIPTextModel.from_pretrained(str(out / "_text_encoder"), dtype=torch.float32).eval()
    vae = AutoencoderKL.from_pretrained(str(out / "_vae"), torch_dtype=torch.float32).eval()
    sched = DDPMScheduler(**{k: v for k, v in scheduler_config().items() if k != "timestep_spacing"})
    unique = sorted(set(data.prompts)) + [""]
    with torch.no_grad():
        ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        emb = torch.cat([text(c).last_hidden_state for c in ids.split(512)])
        lat = torch.cat(
            [vae.encode(data.images[c].float() / 127.5 - 1).latent_dist.mean for c in torch.arange(len(data.prompts)).split(512)]
        ) * vae.config.scaling_factor
    row = {p: i for i, p in enumerate(unique)}
    prompt_row = torch.tensor([row[p] for p in data.prompts])
    torch.manual_seed(s.seed + 6)
    unet = UNet2DConditionModel(**unet_config(emb.shape[-1], s.unet_channels))
    unet.train()
    ema = [p.detach().clone() for p in unet.parameters()]
    opt = torch.optim.AdamW(unet.parameters(), lr=s.unet_lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(s.seed + 6)
    ac = sched.alphas_cumprod
    progress = _Progress("unet", s.unet_steps)
    for step in range(s.unet_steps):
        _set_lr(opt, _cosine_lr(step, s.unet_steps, s.unet_lr, max(1, s.unet_steps // 20)))
        idx = torch.randint(len(prompt_row), (s.unet_batch,), generator=gen)
        x0 = lat[idx]
        rows = prompt_row[idx].clone()
        rows[torch.rand(len(idx), generator=gen) < s.cfg_dropout] = row[""]
        t = torch.randint(0, 1000, (len(idx),), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = ac[t].sqrt().view(-1, 1, 1, 1)
        x_t = a * x0 + (1 - ac[t]).sqrt().view(-1, 1, 1, 1) * eps
        pred = unet(x_t, t, encoder_hidden_states=emb[rows]).sample
        if s.snr_gamma is None:
            loss = F.mse_loss(pred, eps)
        else:
            snr = compute_snr(sched, t)
            weight = snr.clamp(max=s.snr_gamma) / snr
            loss = (weight * F.mse_loss(pred, eps, reduction="none").mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(s.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in unet.parameters()], 1 - decay)
        progress(step, loss=loss.item())
    with torch.no_grad():
        for e, p in zip(ema, unet.parameters()):
            p.copy_(e)
    folder = out / "_unet"
    unet.eval().to(torch.float16).save_pretrained(str(folder))
    return folder


def build_text_encoder(out: Path, layers: int | None = None) -> Path:
    """The pipeline's text encoder: the world CLIP's text tower as a ``transformers.CLIPTextModel``.

    ``layers`` keeps the tower's first ``layers`` transformer layers (its token and position embeddings
    and its final layer norm always; ``None`` keeps all). The world's base uses ``Settings.text_layers = 0``:
    the contrastively trained tower's later states are made of colour (over the 16 token states "red"
    against "blue" moves them by 10.1 on average, "left" against "right" by 0.8), so a UNet conditioned on
    them drew objects wherever the noise put them (mean x 0.49 under "on the left" and under "on the
    right"); on the embedding states it follows position words (0.24 and 0.76, 25 steps, CFG 3). Compare
    with ``python -m r0kit.mini build --out DIR --stages vae unet pipeline --set text_layers=3`` (the
    whole tower; ``DIR`` holding a build's ``clip`` and ``tokenizer``).

    :raises ValueError: ``layers`` is outside ``[0, the tower's layers]``.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    clip, _ = _loaded_clip(out)
    cfg = json.loads((out / LAYOUT["clip"] / "open_clip_config.json").read_text())
    hf = formats.openclip_to_hf(clip, cfg, CLIPTokenizer.from_pretrained(str(out / "tokenizer")))
    config = hf.config.text_config.to_dict()
    keep = config["num_hidden_layers"] if layers is None else layers
    if not 0 <= keep <= config["num_hidden_layers"]:
        raise ValueError(f"text encoder layers must be in [0, {config['num_hidden_layers']}], got {layers}")
    text = CLIPTextModel(CLIPTextConfig(**{**config, "num_hidden_layers": keep})).eval()
    src = {
        k.removeprefix("text_model."): v
        for k, v in hf.state_dict().items()
        if k.startswith("text_model.") and not _beyond_layer(k, keep)
    }
    # transformers 4 nests the tower under "text_model."; transformers 5 does not.
    prefix = "text_model." if any(k.startswith("text_model.") for k in text.state_dict()) else ""
    missing, unexpected = text.load_state_dict({prefix + k: v for k, v in src.items()}, strict=False)
    if [k for k in missing if not k.endswith("position_ids")] or unexpected:
        raise RuntimeError(f"text encoder conversion: missing {missing}, unexpected {unexpected}")
    folder = out / "_text_encoder"
    text.save_pretrained(str(folder))
    return folder


def _beyond_layer(key: str, layers: int) -> bool:
    """Whether a CLIP text state-dict key belongs to encoder layer ``layers`` or later."""
    parts = key.split(".")
    if "layers" not in parts:
        return False
    return int(parts[parts.index("layers") + 1]) >= layers


def build_pipeline(out: Path) -> Path:
    """Assemble and ``save_pretrained`` the StableDiffusionPipeline (fp16 weights)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(str(out / "_vae"), torch_dtype=torch.float16),
        # fp32 on disk: transformers loads a checkpoint in its stored dtype, diffusers upcasts the UNet and
        # VAE to fp32, so a plain DiffusionPipeline.from_pretrained(folder) gets one dtype throughout.
        text_encoder=CLIPTextModel.from_pretrained(str(out / "_text_encoder"), dtype=torch.float32),
        tokenizer=CLIPTokenizer.from_pretrained(str(out / "tokenizer")),
        unet=UNet2DConditionModel.from_pretrained(str(out / "_unet"), torch_dtype=torch.float16),
        scheduler=EulerDiscreteScheduler(**scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = out / LAYOUT["pipeline"]
    pipe.save_pretrained(str(folder), safe_serialization=True)
    for name in ("vocab.json", "merges.txt"):  # the slow tokenizer's files, as Stable Diffusion's repositories hold them
        shutil.copy2(out / "tokenizer" / name, folder / "tokenizer" / name)
    drop_build_paths(folder)
    return folder


def drop_build_paths(folder: Path) -> None:
    """Remove ``_name_or_path`` from every ``config.json`` under ``folder``: from_pretrained records the
    build's temporary folder there, which would make two builds differ and ship a path of this machine."""
    for config in sorted(Path(folder).rglob("config.json")):
        data = json.loads(config.read_text())
        if "_name_or_path" in data:
            del data["_name_or_path"]
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------
# checksums and the command
# ---------------------------------------------------------------------------
CHECKSUMS = "checksums.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(out: Path) -> Path:
    """``checksums.json``: sha256 of every file under the model folders."""
    files = sorted(p for name in LAYOUT.values() for p in (out / name).rglob("*") if p.is_file())
    sums = {str(p.relative_to(out)): sha256(p) for p in files}
    path = out / CHECKSUMS
    path.write_text(json.dumps(sums, indent=2) + "\n")
    return path


#: What each stage reads from the output folder (written by the stage named beside it).
STAGE_INPUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "clip": (("tokenizer", "tokenizer"),),
    "hps": (("clip", "clip"),),
    "aesthetic": (("clip", "clip"), ("tokenizer", "tokenizer")),
    "unet": (("clip", "clip"), ("tokenizer", "tokenizer"), ("_vae", "vae")),
    "pipeline": (("_vae", "vae"), ("_unet", "unet"), ("_text_encoder", "unet"), ("tokenizer", "tokenizer")),
}


def missing_inputs(out: Path, stages: Sequence[str]) -> list[str]:
    """The folders ``stages`` would read from ``out`` that neither exist there nor come from an earlier stage in ``stages``."""
    made: set[str] = set()
    missing = []
    for name in stages:
        for folder, maker in STAGE_INPUTS.get(name, ()):
            if maker not in made and not (out / folder).is_dir():
                missing.append(f"stage {name} needs {out / folder} (from stage {maker}; add it to --stages before {name})")
        made.add(name)
    return missing


def refusals(out: Path, s: Settings, stages: Sequence[str]) -> list[str]:
    """Why a build of ``stages`` into ``out`` with ``s`` cannot run (empty when it can): the one check
    :func:`build` raises on and the command line reports as a usage error, before any work."""
    if s.problems():
        return s.problems()
    if isinstance(stages, str):
        return [f"stages must be a list of stage names, got the string {stages!r}; use [{stages!r}]"]
    unknown = [n for n in stages if n not in STAGES]
    if unknown:
        return [f"unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}"]
    if out.exists() and not out.is_dir():
        return [f"--out {out} is a file; give a folder"]
    return missing_inputs(out, stages)


def build(out: str | Path, settings: Settings | None = None, stages: Sequence[str] = STAGES) -> dict[str, float]:
    """Run ``stages`` into ``out``; returns the seconds each took.

    :raises ValueError: whatever :func:`refusals` names (bad settings, an unknown stage, ``stages`` given
        as one string, ``out`` an existing file, a stage whose inputs are neither in ``out`` nor made by
        an earlier stage).
    """
    s = settings or Settings()
    out = Path(out)
    wrong = refusals(out, s, stages)
    if wrong:
        raise ValueError("; ".join(wrong))
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(s.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    times: dict[str, float] = {}
    data: Data | None = None

    def need_data() -> Data:
        nonlocal data
        if data is None:
            t0 = time.time()
            data = Data.make(s.images, s.seed)
            times["render"] = time.time() - t0
        return data

    steps: dict[str, Callable[[], Any]] = {
        "prompts": lambda: build_prompts(out.parent / "prompts" if out == MODELS else out / "prompts", s.seed),
        "tokenizer": lambda: build_tokenizer(out),
        "clip": lambda: build_clip(out, need_data(), s),
        "hps": lambda: build_hps(out, need_data(), s),
        "aesthetic": lambda: build_aesthetic(out, s),
        "judge": lambda: build_judge(out, need_data(), s),
        "vae": lambda: build_vae(out, need_data(), s),
        "unet": lambda: (build_text_encoder(out, s.text_layers), build_unet(out, need_data().train_split(), s)),
        "pipeline": lambda: build_pipeline(out),
    }
    for name in stages:
        t0 = time.time()
        steps[name]()
        times[name] = time.time() - t0
        log.info("stage %s done in %.1fs", name, times[name])
    if list(stages) == list(STAGES):
        for tmp in ("_vae", "_unet", "_text_encoder", "tokenizer"):
            shutil.rmtree(out / tmp, ignore_errors=True)
        write_checksums(out)
        (out / "build.json").write_text(
            json.dumps({"settings": asdict(s), "seconds": {k: round(v, 1) for k, v in times.items()}, "torch": torch.__version__}, indent=2)
            + "\n"
        )
    return times


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m r0kit.mini build", description="Train the mini world's models on the CPU.")
    p.add_argument("--out", default=None,
                   help="output folder (default: the package's models folder, which a full build rewrites with its checksums)")
    p.add_argument("--seed", type=int, default=0, help="the build's seed (default 0: the committed models)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the checksums hold for one thread count)")
    p.add_argument("--quick", action="store_true", help="a few steps per stage: checks the command, not the models (needs --out)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, metavar="STAGE",
                   help=f"stages to run, in order (default all: {' '.join(STAGES)})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, VALUE in JSON (experiments), e.g. --set unet_steps=3000 --set 'unet_channels=[32,64,64]'")
    args = p.parse_args(argv)
    out = args.out
    if out is None:
        if args.quick or args.set or args.seed != 0 or list(args.stages) != list(STAGES):
            p.error("--out is needed with --quick, --set, --seed or --stages: the default is the shipped models' folder, "
                    "which only a full build with the default settings may rewrite")
        out = str(MODELS)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    s = Settings.quick(seed=args.seed, threads=args.threads) if args.quick else Settings(seed=args.seed, threads=args.threads)
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq or not hasattr(s, key) or key in ("seed", "threads", "extra"):
            known = ", ".join(k for k in asdict(s) if k not in ("seed", "threads", "extra"))
            p.error(f"--set {item!r}: expected KEY=VALUE with KEY one of {known}")
        current = getattr(Settings(), key)
        kind, nullable = Settings.kind(key)
        try:
            parsed = json.loads(value)
            if nullable and parsed is None:
                new = None
            elif kind is int and (isinstance(parsed, bool) or not isinstance(parsed, int)):
                raise TypeError(key)  # 1.5 or true would be truncated to 1 by int()
            else:
                new = tuple(int(v) for v in parsed) if kind is tuple else kind(parsed)
        except (json.JSONDecodeError, TypeError, ValueError, OverflowError):
            p.error(f"--set {item!r}: {key} takes a JSON {'list of ints' if kind is tuple else kind.__name__}"
                    f"{' or null' if nullable else ''}, like {json.dumps(list(current) if kind is tuple else current)}")
        setattr(s, key, new)
    if Path(out).resolve() == MODELS.resolve() and (args.quick or args.set or args.seed != 0 or list(args.stages) != list(STAGES)):
        p.error(f"--out {out} is the shipped models' folder, which only a full build with the default settings may rewrite")
    wrong = refusals(Path(out), s, args.stages)
    if wrong:
        p.error("; ".join(wrong))
    args.out = out
    times = build(args.out, s, args.stages)
    log.info("built in %.0fs: %s", sum(times.values()), ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
