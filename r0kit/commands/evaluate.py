"""``r0kit evaluate``: score trained generators, base models or image folders on a prompt set.

    r0kit evaluate r0kit-train/export stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --prompts-file eval.txt --train-config train.toml --held-out pickscore \\
        --metric fid -M fid.reference=coco-5k/

prints a table shaped like the R0 paper's (model | one column per reward, in R0's
units; held-out rewards and metrics marked ``*``) and writes ``evaluation.csv``,
``summary.csv`` and one grid image per model under ``--output``. ``MODEL@K``
samples a base model in K steps, so ``r0kit-mini@4 r0kit-mini@25`` compares both. Every source, prompt, device and the output
folder are checked before a model loads; a run stopped part-way keeps the rows
it finished.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from r0kit.commands._common import add_output, describe, int_at_least, key_values, print_evaluation, train_config


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score generators or image folders on prompts (R0-style table)",
                       description=describe(__doc__))
    p.add_argument("sources", nargs="+", help="exported generator folders, pipeline folders/hub ids, or image folders")
    p.add_argument("--prompts-file", type=Path, help="prompts, one a line (.txt) or JSONL")
    p.add_argument("--reward", "-r", action="append", default=[], help="a reward to score (repeatable)")
    p.add_argument("--held-out", action="append", default=[], help="a reward not trained on (repeatable)")
    p.add_argument("--reward-option", "-R", action="append", default=[], metavar="REWARD.KEY=VALUE",
                   help="a reward factory option; VALUE is read as TOML (clip.device='cpu')")
    p.add_argument("--metric", "-m", action="append", default=[],
                   help="a set-level metric (repeatable): fid, mini_geneval, mini_fid, mini_diversity, ... (r0kit plugins)")
    p.add_argument("--metric-option", "-M", action="append", default=[], metavar="METRIC.KEY=VALUE",
                   help="a metric option; VALUE is read as TOML (fid.reference='ref/')")
    p.add_argument("--train-config", type=Path,
                   help="take the trained rewards (and options) from this training TOML, or a train preset's name (mini)")
    p.add_argument("--label", action="append", default=[], help="row label of each source, in order")
    p.add_argument("--steps", type=int_at_least(1), default=25, help="sampling steps for base models (default 25)")
    p.add_argument(
        "--size", type=int_at_least(8), help="image side of every generated row, exports included (default: each model's native size, an export's own)"
    )
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the first image; image i uses seed + i")
    p.add_argument("--seeds", type=int_at_least(1), default=1, help="images per prompt (diversity metrics need 2 or more)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale for base models, >= 0 (default 1; 0 or 1: none)")
    p.add_argument("--batch-size", type=int_at_least(1), default=4, help="prompts sampled together (default 4)")
    p.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default auto)")
    add_output(p, default=Path("r0kit-eval"), what="the output folder")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (the sampling bar of each row, nor the model-loading and download bars of huggingface_hub, transformers and diffusers)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from r0kit.checks import MANIFEST, check_device, check_output_dir
    from r0kit.commands._common import check_option_devices, quiet_library_progress
    from r0kit.config import load_toml, parse_objective, read_prompts
    from r0kit.errors import OptionError
    from r0kit.evaluate import evaluate
    from r0kit.io import StagedDir, files_under, write_json

    if args.no_progress:
        quiet_library_progress()
    rewards = list(args.reward)
    options: dict = {}
    if args.train_config is not None:
        args.train_config = train_config(args.train_config)
        obj = parse_objective(load_toml(args.train_config).get("objective", {}), str(args.train_config))
        for label, t in obj.rewards.items():
            name = t.name or label
            rewards.append(name)
            options[name] = t.options
    for name, opts in key_values(args.reward_option, "--reward-option", dotted=True).items():
        options.setdefault(name, {}).update(opts)
    unknown = sorted(set(options) - set(rewards) - set(args.held_out))
    if unknown:
        raise OptionError(f"--reward-option names reward(s) {unknown} that neither --reward nor --held-out selects")
    metric_options = key_values(args.metric_option, "--metric-option", dotted=True, example="fid.reference=ref_images")
    unknown = sorted(set(metric_options) - set(args.metric))
    if unknown:
        raise OptionError(f"--metric-option names metric(s) {unknown} that --metric does not select")
    check_option_devices(metric_options, lambda key: f"metric option {key}")
    check_device(args.device, "--device")
    check_option_devices(options, lambda key: f"reward option {key}")
    prompts = read_prompts(args.prompts_file) if args.prompts_file is not None else None
    # the tables are the outputs every evaluation writes: a folder holding ones no run wrote is refused
    # now, not after the sampling (the row folders, named by label, are checked when the files are placed)
    out = check_output_dir(args.output, "--output", overwrite=args.overwrite, outputs=("evaluation.csv", "summary.csv"))
    staged = StagedDir(out)
    staged.open()
    try:
        result = evaluate(
            args.sources,
            prompts,
            rewards=rewards,
            held_out=args.held_out,
            reward_options=options,
            metrics=args.metric,
            metric_options=metric_options,
            output=staged.path,
            steps=args.steps,
            size=args.size,
            seed=args.seed,
            seeds=args.seeds,
            guidance=args.guidance,
            batch_size=args.batch_size,
            device=args.device,
            labels=args.label,
            progress=not args.no_progress,
        )
        status = "interrupted" if result.interrupted else "failed" if result.error is not None else "complete"
        # every file, not only the top-level entries: a later --overwrite then replaces exactly these,
        # and keeps what the user put beside them inside the row folders (StagedDir.commit)
        files = files_under(staged.path)
        write_json(staged.path / MANIFEST, {"command": "evaluate", "argv": getattr(args, "argv", None), "status": status,
                                            "rows": [r.label for r in result.rows], "not_done": result.not_done,
                                            "files": sorted(files + [MANIFEST])})
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    print_evaluation(result)
    print(f"wrote evaluation.csv, summary.csv and {len(result.rows)} grid image(s) under {out}")
    if result.interrupted or result.error is not None:
        from r0kit.errors import describe_failure

        what = "interrupted" if result.interrupted else f"error: {describe_failure(result.error)}"
        print(f"r0kit: {what}; kept the rows of {', '.join(r.label for r in result.rows)} in {str(out)!r}; "
              f"not evaluated: {', '.join(result.not_done)}", file=sys.stderr)
        return 130 if result.interrupted else 2
    return 0
