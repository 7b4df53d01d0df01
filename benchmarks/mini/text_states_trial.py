"""Does the base UNet follow position words when its text states carry them? A short retraining trial.

    python benchmarks/mini/text_states_trial.py --states last     # the text tower's last hidden states (as shipped)
    python benchmarks/mini/text_states_trial.py --states embed    # its layer-0 states: token + position embedding, final layer norm

Trains a fresh base UNet (the shipped architecture, ``r0kit.mini.build.unet_config``) for
``--steps`` steps with the build's recipe (ε-prediction, 10% empty prompts, EMA 0.999, cosine
learning rate) on ``--images`` rendered train-split scenes, encoded by the committed VAE, with
the committed text tower's ``--states``. Then it samples 24 images per position phrase
("a large red circle on the left", ..., 25 steps, CFG 3) and prints where the judge finds the
object (mean x, y; a model that follows the words puts "on the left" at a smaller x than "on
the right"), and the judge's accuracy on the 48 training-split evaluation prompts × 2 seeds.

The shipped text tower's last states are made of colour (benchmarks/mini/probe_conditioning.py
and the README's "What the mini world shows today"); this asks whether the UNet would use
position words it could tell apart. Nothing is written to disk. About 7 minutes on 2 CPU cores
with the defaults.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

POSITIONS = ("on the left", "on the right", "at the top", "at the bottom")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--states", choices=("last", "embed"), default="last")
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (6 prompts per position phrase)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from r0kit.mini import build as B
    from r0kit.mini import judge as J
    from r0kit.mini import world as W

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline.from_pretrained(str(B.MODELS / "pipeline"), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    tok, text, vae = pipe.tokenizer, pipe.text_encoder.eval(), pipe.vae.eval()
    tower = getattr(text, "text_model", text)  # transformers 4 nests the tower; 5 does not

    @torch.no_grad()
    def encode(prompts: list[str]) -> torch.Tensor:
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        if args.states == "last":
            return text(ids).last_hidden_state
        return tower.final_layer_norm(text(ids, output_hidden_states=True).hidden_states[0])

    data = B.Data.make(args.images, 0).train_split()
    unique = sorted(set(data.prompts)) + [""]
    emb = torch.cat([encode(unique[i : i + 512]) for i in range(0, len(unique), 512)])
    with torch.no_grad():
        lat = torch.cat([vae.encode(data.images[c].float() / 127.5 - 1).latent_dist.mean for c in torch.arange(len(data.prompts)).split(512)])
    lat = lat * vae.config.scaling_factor
    row = {q: i for i, q in enumerate(unique)}
    prompt_row = torch.tensor([row[q] for q in data.prompts])
    unet = UNet2DConditionModel(**B.unet_config(emb.shape[-1], B.Settings().unet_channels)).train()
    ema = [q.detach().clone() for q in unet.parameters()]
    lr = B.Settings().unet_lr
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-4)
    ac = DDPMScheduler(**{k: v for k, v in B.scheduler_config().items() if k != "timestep_spacing"}).alphas_cumprod
    gen = torch.Generator().manual_seed(6)
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = B._cosine_lr(step, args.steps, lr, max(1, args.steps // 20))
        idx = torch.randint(len(prompt_row), (args.batch,), generator=gen)
        rows = prompt_row[idx].clone()
        rows[torch.rand(len(idx), generator=gen) < B.Settings().cfg_dropout] = row[""]
        t = torch.randint(0, 1000, (len(idx),), generator=gen)
        eps = torch.randn(lat[idx].shape, generator=gen)
        x_t = ac[t].sqrt().view(-1, 1, 1, 1) * lat[idx] + (1 - ac[t]).sqrt().view(-1, 1, 1, 1) * eps
        loss = F.mse_loss(unet(x_t, t, encoder_hidden_states=emb[rows]).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [q.detach() for q in unet.parameters()], 1 - min(0.999, (1 + step) / (10 + step)))
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    with torch.no_grad():
        for e, q in zip(ema, unet.parameters()):
            q.copy_(e)
    pipe.unet = unet.eval()

    def sample(prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return pipe(prompt_embeds=encode(prompts), negative_prompt_embeds=encode([""] * len(prompts)), num_inference_steps=25,
                        guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="pt", height=32, width=32).images

    placed = [f"a large {c} {s} {where}" for c in ("red", "blue", "green") for s in ("circle", "square") for where in POSITIONS]
    placed = [q for q in placed for _ in range(args.samples)]
    images = J.to_hwc(sample(placed))
    print(f"states={args.states}, {args.steps} steps: where the judge finds the named colour's object")
    for where in POSITIONS:
        xy = [(d[0].x, d[0].y) for q, im in zip(placed, images) if where in q for d in [[d for d in J.detect(im) if d.colour in q]] if d]
        mean = np.mean(xy, axis=0) if xy else (float("nan"), float("nan"))
        print(f"  {where:14s} n={len(xy):3d}  mean x {mean[0]:.2f}  mean y {mean[1]:.2f}")
    prompts = [q for q in W.evaluation_prompts("train") for _ in range(2)]
    acc = J.accuracy(J.score(prompts, sample(prompts)))
    print("judge on training-split prompts:", "  ".join(f"{k} {v:.3f}" for k, v in acc.items() if v == v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
