"""Can a method learn a concept at all? Its shipped config beside one-key variations of it.

    python benchmarks/learnability.py --method textual_inversion --concepts sks_ring zwx_checker \\
        --vary lr=0.006,0.06 num_vectors=2,4 steps=600 --write

When the comparison shows a method not learning a concept, this separates "badly tuned" from "cannot":
each setting trains at every training seed (the method's own trainer, as in the comparison) and is
judged as the comparison judges it (`bench.stats.learned`): the oracle's presence in the default sweep's
instance and recontext images at weight 1 minus weight 0, on the sweep's generation seeds, with a
t-interval over the training seeds; micro CLIP-I's gain is beside it as the proxy. Each variation changes one key of `conf/method/<method>.yaml` (or `steps`, the training
budget) and keeps the rest.

Two worker processes with one torch thread each (see README: threads).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_STATE: dict = {}


def _init() -> None:
    import torch
    from omegaconf import OmegaConf

    from bench.clip import load_encoder
    from bench.models import load_pipeline

    torch.set_num_threads(1)
    _STATE["pipe"] = load_pipeline(OmegaConf.load(ROOT / "conf" / "model" / "micro.yaml"), "cpu")
    _STATE["encoder"] = load_encoder("micro")
    from bench.oracle import load_oracle

    _STATE["oracle"] = load_oracle()


def parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def settings(method: str, vary: list[str]) -> list[dict]:
    """The shipped config ({}) and one dict per single-key variation, e.g. 'lr=0.006,0.06' -> two."""
    from omegaconf import OmegaConf

    known = set(OmegaConf.load(ROOT / "conf" / "method" / f"{method}.yaml")) | {"steps"}
    out: list[dict] = [{}]
    for item in vary:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise SystemExit(f"--vary {item!r}: write key=value[,value...]")
        if key not in known:
            raise SystemExit(f"--vary {item!r}: {key!r} is not a key of conf/method/{method}.yaml (nor 'steps'); known: {', '.join(sorted(known))}")
        out += [{key: parse_value(v)} for v in values.split(",")]
    return out


def gain(method_name: str, concept_name: str, seed: int, change: dict) -> dict:
    """Train one run with `change` applied and score it at weights 0 and 1."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from bench.data import load_concepts
    from bench.images import generate
    from bench.sweep import sweep_prompts
    from methods.settings import TrainSettings
    from metrics.clip_score import clip_i

    pipe, encoder = _STATE["pipe"], _STATE["encoder"]
    method_cfg = OmegaConf.load(ROOT / "conf" / "method" / f"{method_name}.yaml")
    train_cfg = OmegaConf.load(ROOT / "conf" / "train" / "default.yaml")
    sweep_cfg = OmegaConf.load(ROOT / "conf" / "sweep" / "default.yaml")
    steps = int(change.get("steps", train_cfg.steps))
    for key, value in change.items():
        if key != "steps":
            method_cfg[key] = value
    [concept] = load_concepts(OmegaConf.create({"concepts": [concept_name]}), 64)
    method = instantiate(method_cfg)
    start = time.perf_counter()
    result = method.train(pipe, concept, TrainSettings(steps=steps, batch_size=int(train_cfg.batch_size), seed=seed, progress=False, cache_dir=Path("/tmp/adapterbench_learnability")))
    train_s = time.perf_counter() - start
    prompts = [p for p in sweep_prompts(sweep_cfg, concept) if p.kind != "unrelated"]
    seeds = [int(s) for s in sweep_cfg.seeds]
    scores = {}
    for weight in (0.0, 1.0):
        method.apply(pipe, result.artifact, weight)
        try:
            texts = [method.prompt(p.text, concept) for p in prompts for _ in seeds]
            images = generate(pipe, texts, seeds * len(prompts), int(sweep_cfg.steps), float(sweep_cfg.guidance))
        finally:
            method.remove(pipe)
        scores[weight] = (clip_i(encoder, images, concept.images).mean().item(), sum(_STATE["oracle"].present(images, concept_name)) / len(images))
    setting = ", ".join(f"{k}={v}" for k, v in change.items()) or "shipped config"
    return {"setting": setting, "concept": concept_name, "train_seed": seed, "presence_1": scores[1.0][1], "presence_0": scores[0.0][1],
            "gain": scores[1.0][1] - scores[0.0][1], "clip_i_gain": scores[1.0][0] - scores[0.0][0], "train_s": train_s}


def main(argv: list[str] | None = None) -> None:
    from bench.models import skip_bitsandbytes

    skip_bitsandbytes()  # a benchmark never trains with 8-bit AdamW: no bitsandbytes import, no console line about it
    from bench.io import publish

    import pandas as pd

    from bench import stats, world

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", required=True)
    p.add_argument("--concepts", nargs="+", required=True, help=f"world concepts ({', '.join(world.CONCEPTS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (the comparison's by default)")
    p.add_argument("--vary", nargs="*", default=[], help="key=v1,v2 ... one-key variations of the method config, or steps=N")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--write", action="store_true", help="write results/benchmarks/learnability_<method>.md")
    args = p.parse_args(argv)
    if not (ROOT / "conf" / "method" / f"{args.method}.yaml").is_file():
        raise SystemExit(f"--method {args.method!r}: no conf/method/{args.method}.yaml")
    unknown = [c for c in args.concepts if c not in world.CONCEPTS]
    if unknown:
        raise SystemExit(f"--concepts: unknown {unknown}; known: {', '.join(world.CONCEPTS)}")
    jobs = [(args.method, c, s, change) for change in settings(args.method, args.vary) for c in args.concepts for s in args.seeds]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers, initializer=_init) as pool:
        rows = list(pool.map(gain, *zip(*jobs)))
    wall = time.perf_counter() - start
    runs = pd.DataFrame(rows)
    rows = []
    for (setting, concept), g in runs.groupby(["setting", "concept"], sort=False):
        v = stats.judge_gain(g.gain.to_numpy())
        rows.append({"setting": setting, "concept": concept, "runs": len(g), "presence @1": g.presence_1.mean(), "presence @0": g.presence_0.mean(),
                     "gain": v["gain"], "gain 95% t-interval": f"[{v['low']:.3f}, {v['high']:.3f}]", "learned": v["verdict"],
                     "CLIP-I gain (proxy)": g.clip_i_gain.mean(), "train_s": g.train_s.mean()})
    table = pd.DataFrame(rows)
    text = (
        f"# Learnability: {args.method} on {', '.join(args.concepts)}\n\n"
        f"`python benchmarks/learnability.py --method {args.method} --concepts {' '.join(args.concepts)} --vary {' '.join(args.vary)}`\n\n"
        f"Per setting and concept: the oracle's presence in the default sweep's instance and recontext images at weight 1 and 0 "
        f"(generation seeds of conf/sweep/default.yaml), mean over training seeds {args.seeds}; {stats.LEARNED_RULE}. "
        "Micro CLIP-I's gain (weight 1 minus 0) beside it, as the proxy. "
        f"Each setting changes one key of conf/method/{args.method}.yaml (or the step budget). {len(jobs)} training runs, "
        f"{wall:.0f} s wall with {args.workers} worker(s) x 1 thread.\n\n"
        f"{table.to_markdown(index=False, floatfmt='.3f')}\n"
    )
    publish(text, ROOT / "results" / "benchmarks" / f"learnability_{args.method}.md", args.write)


if __name__ == "__main__":
    main()
