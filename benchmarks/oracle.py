"""Is the concept-presence oracle a judge to trust? Its hit rate and false-presence rate, per concept.

    python benchmarks/oracle.py [--write]

Per world concept (suite, tuning and texture probes):
- hit rate on fresh renders (seeds the oracle never saw), crisp and through the micro VAE;
- false presence on the base model's images of world prompts (known shapes in known colours: none of
  them shows a held-out concept), and on the base model's images of the concept's own instance prompt
  with the untrained token (what every method's weight 0 draws);
- blank images judged as 'none'.
Targets (issue #15): hit rate >= 95 % on fresh renders, false presence <= 5 %.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HIT_TARGET = 0.95
FALSE_TARGET = 0.05


def main(argv: list[str] | None = None) -> None:
    from bench.models import skip_bitsandbytes

    skip_bitsandbytes()  # a benchmark never trains with 8-bit AdamW: no bitsandbytes import, no console line about it
    from bench.io import publish

    import numpy as np
    import pandas as pd
    import torch
    from omegaconf import OmegaConf
    from PIL import Image

    from bench import world
    from bench.images import generate
    from bench.models import load_pipeline
    from bench.build.oracle import vae_round_trip
    from bench.oracle import NONE, load_oracle
    from bench.quality import world_prompts

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--renders", type=int, default=64, help="fresh renders per concept")
    p.add_argument("--write", action="store_true", help="write results/benchmarks/oracle.md")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    oracle = load_oracle()
    pipe = load_pipeline(OmegaConf.load(ROOT / "conf" / "model" / "micro.yaml"), "cpu")

    # World prompts: every shape x colour, backgrounds rotating; two generation seeds each.
    rows = world_prompts([0, 1])
    world_images = generate(pipe, [r["prompt"] for r in rows], [r["seed"] for r in rows], 10)
    untrained = {prompt: generate(pipe, [prompt] * 16, list(range(16)), 10) for prompt in {c.instance_prompt for c in world.CONCEPTS.values()}}

    rows = []
    for name, concept in world.CONCEPTS.items():
        renders = world.concept_images(name, args.renders, seed=99)
        as_tensor = torch.from_numpy(np.stack([np.asarray(im) for im in renders])).permute(0, 3, 1, 2)
        decoded = [Image.fromarray(a) for a in vae_round_trip(as_tensor, progress=False).permute(0, 2, 3, 1).numpy()]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        rows.append({
            "concept": name, "kind": concept.kind, "role": concept.role,
            "hit: fresh renders": mean(oracle.present(renders, name)),
            "hit: through the VAE": mean(oracle.present(decoded, name)),
            "false: world prompts": mean(oracle.present(world_images, name)),
            f"false: '{concept.instance_prompt}' (untrained)": mean(oracle.present(untrained[concept.instance_prompt], name)),
        })
    table = pd.DataFrame(rows)
    false_cols = [c for c in table.columns if c.startswith("false")]
    # The two untrained-prompt columns (objects, styles) each apply to one kind: merge them into one.
    table["false: own prompt, untrained token"] = table[false_cols[1:]].bfill(axis=1).iloc[:, 0]
    table = table.drop(columns=false_cols[1:])
    table["meets targets"] = (table["hit: fresh renders"] >= HIT_TARGET) & (table["false: world prompts"] <= FALSE_TARGET) & (table["false: own prompt, untrained token"] <= FALSE_TARGET)
    blanks = [Image.new("RGB", (64, 64), c) for c in [*world.BACKGROUNDS.values(), (255, 255, 255), (0, 0, 0)]]
    blank_ok = sum(shape == NONE for shape, _ in oracle.classify(blanks)) / len(blanks)
    text = (
        "# Concept-presence oracle (benchmarks/oracle.py)\n\n"
        f"Oracle: `bench/zoo/oracle/` ({oracle.config['trained']}). Hit rate: share of {args.renders} fresh renders per concept (seed 99; "
        "training used other seeds) judged as showing the concept, crisp and after the micro VAE's round trip. False presence: share of the "
        f"micro SD's images judged as showing the concept, for {len(world_images)} world prompts (every known shape x colour, 2 seeds; "
        "none of them draws a held-out concept) and for 16 seeds of the concept's own instance prompt with its untrained token (what "
        f"weight 0 draws). Targets: hit >= {HIT_TARGET:.0%}, false presence <= {FALSE_TARGET:.0%}. Blank images judged 'none': "
        f"{blank_ok:.0%} of {len(blanks)}. {time.perf_counter() - start:.0f} s.\n\n"
        f"{table.to_markdown(index=False, floatfmt='.3f')}\n"
    )
    publish(text, ROOT / "results" / "benchmarks" / "oracle.md", args.write)


if __name__ == "__main__":
    main()
