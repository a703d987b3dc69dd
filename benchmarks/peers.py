"""Our trainers beside the diffusers example scripts, on the same model, data, budget and threads.

    python benchmarks/peers.py --peers ../shared/peers/diffusers-examples            # print the table
    python benchmarks/peers.py --peers ../shared/peers/diffusers-examples --write    # and commit it

For LoRA (`train_dreambooth_lora.py`), Textual Inversion (`textual_inversion.py`) and DreamBooth with
prior preservation (`train_dreambooth.py`): the embedded micro model, the 8 instance images of
`sks_crescent`, the same 16 class images (generated once by our code and handed to both), the same lr,
rank / vector count, batch and steps, fp32, one seed. Each side runs as its own `python` process, timed
whole (start-up, loading, training, saving) and per step (its training progress bar, read with tqdm's
smoothing off: steps over the bar's elapsed time), with `OMP_NUM_THREADS` set to the thread count for
both. Pairs are interleaved and their order alternates, so a drift in the machine's speed hits both.

Both sides compute the same losses (DreamBooth: instance and prior terms in one batch of 2 x batch); our
side caches what the frozen parts would recompute every step (VAE latents of the fixed images, the
frozen text encoder's states), as kohya's scripts do. The examples need `accelerate` installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONCEPT = "sks_crescent"
SCRIPTS = {"lora": "train_dreambooth_lora.py", "textual_inversion": "textual_inversion.py", "dreambooth": "train_dreambooth.py"}
TARGET = 1.35  # the bar: example time / our time
BAR = re.compile(r"(\d+)/(\d+) \[(?:(\d+):)?(\d+):(\d+)<[^,\]]*,\s*([\d.]+)(it/s|s/it)")


def our_config(method: str, steps: int, batch: int, threads: int, results: Path):
    from hydra import compose, initialize_config_dir

    from bench.config import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"method=[{method}]", f"data.concepts=[{CONCEPT}]", f"train.steps={steps}",
                                            f"train.batch_size={batch}", f"threads={threads}", f"results_dir={results}"])


def ours(args) -> None:
    """One training of ours in this process (the child side of the benchmark): what a worker does."""
    import torch

    from bench.cost import measure_training
    from bench.data import load_concepts
    from bench.models import load_pipeline, long_lived
    from methods import build_method
    from methods.settings import TrainSettings

    torch.set_num_threads(args.threads)
    cfg = our_config(args.ours, args.steps, args.batch, args.threads, args.results)
    with long_lived():  # as a worker loads its model
        pipe = load_pipeline(cfg.model, "cpu")
    concept = load_concepts(cfg.data, int(cfg.model.resolution))[0]
    settings = TrainSettings.from_config(cfg, seed=0)
    _, cost = measure_training(build_method(cfg, args.ours), pipe, concept, settings, args.results / "train" / args.ours)
    print(json.dumps({"train_time_s": cost.train_time_s, "losses": cost.losses[-5:]}))


def prepare(folder: Path, steps: int, batch: int) -> dict:
    """The shared inputs: instance images as files, class images generated once (our cache, copied for the
    example), and the prompts; returns what the command lines need."""
    from bench.data import load_concepts
    from bench.models import load_pipeline
    from methods import build_method
    from methods.settings import TrainSettings

    cfgs = {m: our_config(m, steps, batch, 1, folder / "ours") for m in SCRIPTS}
    cfg = cfgs["dreambooth"]
    concept = load_concepts(cfg.data, int(cfg.model.resolution))[0]
    (folder / "instance").mkdir(parents=True)
    for i, im in enumerate(concept.images):
        im.save(folder / "instance" / f"{i:03d}.png")
    pipe = load_pipeline(cfg.model, "cpu")
    method = build_method(cfg, "dreambooth")
    settings = TrainSettings.from_config(cfg)
    method.generate_inputs(pipe, concept, settings)
    shutil.copytree(method.class_image_dir(pipe, concept, settings), folder / "class", ignore=shutil.ignore_patterns("*.json"))
    return {"concept": concept, "model": str(ROOT / "bench" / "zoo" / "micro_sd"), "num_class_images": int(cfg.method.dreambooth.num_class_images),
            "lr": {m: float(c.method[m].lr) for m, c in cfgs.items()}, "rank": int(cfgs["lora"].method.lora.rank),
            "num_vectors": int(cfgs["textual_inversion"].method.textual_inversion.num_vectors)}


def peer_command(peers: Path, method: str, shared: dict, folder: Path, steps: int, batch: int, out: Path) -> list[str]:
    c = shared["concept"]
    common = ["--pretrained_model_name_or_path", shared["model"], "--resolution", "64", "--train_batch_size", str(batch),
              "--max_train_steps", str(steps), "--learning_rate", str(shared["lr"][method]), "--lr_scheduler", "constant",
              "--lr_warmup_steps", "0", "--seed", "0", "--output_dir", str(out), "--checkpointing_steps", "100000",
              "--dataloader_num_workers", "0", "--mixed_precision", "no"]
    if method == "lora":
        return [sys.executable, str(peers / SCRIPTS[method]), *common, "--instance_data_dir", str(folder / "instance"),
                "--instance_prompt", c.instance_prompt, "--rank", str(shared["rank"])]
    if method == "dreambooth":
        return [sys.executable, str(peers / SCRIPTS[method]), *common, "--instance_data_dir", str(folder / "instance"),
                "--instance_prompt", c.instance_prompt, "--with_prior_preservation", "--prior_loss_weight", "1.0",
                "--class_data_dir", str(folder / "class"), "--class_prompt", c.class_prompt, "--num_class_images", str(shared["num_class_images"])]
    return [sys.executable, str(peers / SCRIPTS[method]), *common, "--train_data_dir", str(folder / "instance"),
            "--learnable_property", "object", "--placeholder_token", f"<{c.token}>", "--initializer_token", c.initializer,
            "--num_vectors", str(shared["num_vectors"]), "--save_steps", "100000"]


def timed(cmd: list[str], threads: int, steps: int) -> tuple[float, float]:
    """(whole-process seconds, steps/s of its training bar)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_SMOOTHING": "0",
           "TQDM_MININTERVAL": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:2])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    done = [m for m in BAR.finditer(proc.stderr) if int(m.group(1)) == int(m.group(2)) == steps]
    if not done:
        sys.exit(f"{' '.join(cmd[:2])}: no finished {steps}-step progress bar in its output")
    m = done[-1]
    rate = float(m.group(6))
    return wall, (rate if m.group(7) == "it/s" else 1 / rate)


def main(argv: list[str] | None = None) -> None:
    from bench.models import skip_bitsandbytes

    skip_bitsandbytes()  # a benchmark never trains with 8-bit AdamW: no bitsandbytes import, no console line about it
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peers", type=Path, help="folder of the diffusers example scripts (../shared/peers/diffusers-examples)")
    p.add_argument("--method", nargs="*", default=list(SCRIPTS), choices=list(SCRIPTS))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--pairs", type=int, default=4, help="interleaved (example, ours) pairs per method and thread count (at two threads single pairs range 1.25-1.52x on this host: fewer do not settle a row)")
    p.add_argument("--threads", type=int, nargs="*", default=None, help="default: 1 and every usable core")
    p.add_argument("--write", action="store_true", help="write results/benchmarks/peers.md")
    p.add_argument("--ours", help=argparse.SUPPRESS)  # the child process: one training of ours
    p.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.pairs < 1:
        p.error(f"--pairs: at least 1 pair per row, got {args.pairs}")
    if args.ours:
        args.threads = args.threads[0]
        return ours(args)
    import pandas as pd

    from bench.io import publish
    from bench.provenance import cpu_model, usable_cores

    if not args.peers or not all((args.peers / s).is_file() for s in SCRIPTS.values()):
        sys.exit(f"--peers: {args.peers} does not hold {', '.join(SCRIPTS.values())} (see ../shared/peers/README.md)")
    try:
        import accelerate  # noqa: F401
    except ImportError:
        sys.exit("the diffusers examples need accelerate: pip install accelerate")
    threads = args.threads or sorted({1, usable_cores()})
    rows = []
    with tempfile.TemporaryDirectory(prefix="adapterbench_peers_") as tmp:
        folder = Path(tmp)
        shared = prepare(folder, args.steps, args.batch)
        for method in args.method:
            for t in threads:
                peer, mine = [], []
                for pair in range(args.pairs):
                    out = folder / "out"
                    shutil.rmtree(out, ignore_errors=True)
                    shutil.rmtree(folder / "ours" / "train", ignore_errors=True)
                    sides = [("peer", peer_command(args.peers, method, shared, folder, args.steps, args.batch, out)),
                             ("ours", [sys.executable, str(Path(__file__).resolve()), "--ours", method, "--steps", str(args.steps), "--batch", str(args.batch),
                                       "--threads", str(t), "--results", str(folder / "ours")])]
                    for side, cmd in (sides if pair % 2 == 0 else sides[::-1]):
                        (peer if side == "peer" else mine).append(timed(cmd, t, args.steps))
                        print(f"{method} threads={t} pair {pair} {side}: {(peer if side == 'peer' else mine)[-1]}", file=sys.stderr)
                pw, pr = statistics.mean(w for w, _ in peer), statistics.mean(r for _, r in peer)
                ow, orate = statistics.mean(w for w, _ in mine), statistics.mean(r for _, r in mine)
                # Each pair's own ratios too: the host's speed drifts over minutes (at two threads by more
                # than the bar's margin), and their spread shows how far one row's mean can be trusted.
                whole = [p[0] / o[0] for p, o in zip(peer, mine)]
                step = [o[1] / p[1] for p, o in zip(peer, mine)]
                rows.append({"method": method, "threads": t, "example (s, whole process)": pw, "ours (s)": ow, "speed-up, whole": pw / ow,
                             "pairs, whole": f"{min(whole):.2f}-{max(whole):.2f}",
                             "example steps/s": pr, "ours steps/s": orate, "speed-up, per step": orate / pr,
                             "pairs, per step": f"{min(step):.2f}-{max(step):.2f}",
                             f">= {TARGET}x": "yes" if min(pw / ow, orate / pr) >= TARGET else "no"})
    table = pd.DataFrame(rows)
    text = (
        f"# Our trainers vs the diffusers examples\n\nMicro SD, `{CONCEPT}` (8 images), batch {args.batch}, {args.steps} steps, fp32, "
        f"{args.pairs} interleaved pairs per row (mean), on {usable_cores()} usable cores ({cpu_model()}); example scripts from "
        f"`{args.peers.name}` (`SOURCE`: {(args.peers / 'SOURCE').read_text().split()[0][:12] if (args.peers / 'SOURCE').is_file() else 'unknown'}). "
        f"Speed-up = example time / our time (per step: our steps/s / theirs); 'pairs': the lowest and highest of the pairs' own ratios.\n\n{table.to_markdown(index=False, floatfmt='.2f')}\n"
    )
    publish(text, ROOT / "results" / "benchmarks" / "peers.md", args.write)


if __name__ == "__main__":
    main()
