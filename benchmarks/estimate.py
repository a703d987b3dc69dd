"""mode=estimate checked against real trainings of the micro model, then the SD-scale tables.

    python benchmarks/estimate.py [--steps 60] [--threads 1] [--write]

Part 1, micro (where training really runs here): each method trains through `bench.cost.measure_training`
(the runner's own measurement) and is estimated by `bench.estimate` from the architecture alone with
`estimate.device=cpu` (every tensor counts, as the CPU tensor peak does). Parameters and file bytes must be
equal, the estimated peak within 15 % of the measured one; the FLOP count of a training step over the
measured s/step gives the rate the CPU reached, which should be similar across methods if the FLOP count
follows the work. Part 2: the same estimate for SD 1.5, SD 2.1 and SDXL (A100-40GB) and SD 3.5 Large and
Medium, FLUX.1-dev and FLUX.2 klein base 4B (H100), each as it is trained: batch 1 at its resolution, its
experiment's steps.
Written to results/benchmarks/estimate.md with --write.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from bench.config import register  # noqa: E402

OUT = ROOT / "results" / "benchmarks" / "estimate.md"
METHODS = ["dreambooth", "textual_inversion", "lora", "hypernetwork"]
MEMORY_TOLERANCE = 0.15
# The diffusion transformers: the methods trained on them, adapters on both streams' attention projections,
# in bf16 (their released dtype), timed on an H100.
DIT = ["sd35", "sd35_medium", "flux1", "flux2_klein"]
DIT_METHODS = ["dreambooth", "textual_inversion", "lora", "hypernetwork", "lokr"]
DIT_VARIANTS = "[fp32,bf16,bf16+ckpt,bf16+ckpt+adamw8bit]"
BOTH_STREAMS = "[to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,add_v_proj,to_add_out]"


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        chosen = [] if any(o.startswith("method=") for o in overrides) else [f"method=[{','.join(METHODS)}]"]
        return compose("config", overrides=[*chosen, *overrides])


def micro_rows(steps: int) -> list[dict]:
    from bench.cost import measure_training
    from bench.data import load_world_concept
    from bench.estimate import estimate
    from bench.models import load_pipeline
    from methods import build_method
    from methods.settings import TrainSettings

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_cfg(f"train.steps={steps}", f"results_dir={tmp}", "progress=false", "estimate.device=cpu", "estimate.variants=[fp32]")
        est = estimate(cfg).set_index("method")
        pipe = load_pipeline(cfg.model, "cpu")
        concept = load_world_concept("sks_crescent", int(cfg.data.n_images), int(cfg.model.resolution))
        for name in METHODS:
            method = build_method(cfg, name)
            settings = TrainSettings.from_config(cfg, 0)
            method.generate_inputs(pipe, concept, settings)
            _, cost = measure_training(method, pipe, concept, settings, Path(tmp) / name)
            e = est.loc[name]
            ratio = e["train peak memory (MiB)"] / cost.peak_mem_mib
            rows.append({
                "method": name,
                "params (est = measured)": f"{int(e['trainable params']):,} {'=' if int(e['trainable params']) == cost.trainable_params else '!='} {cost.trainable_params:,}",
                "file bytes (est = measured)": f"{int(e['file (bytes)']):,} {'=' if int(e['file (bytes)']) == cost.artifact_bytes else '!='} {cost.artifact_bytes:,}",
                "memory MiB, est": e["train peak memory (MiB)"], "memory MiB, measured": cost.peak_mem_mib, "est / measured": ratio,
                f"within {MEMORY_TOLERANCE:.0%}": abs(ratio - 1) <= MEMORY_TOLERANCE,
                "train GFLOP/step (est)": e["train step (GFLOP)"], "measured s/step": 1 / cost.steps_per_s,
                "GFLOP/s reached": e["train step (GFLOP)"] * cost.steps_per_s,
            })
    return rows


# Published sampling throughput: fal.ai's stable-diffusion-benchmarks (github.com/fal-ai/stable-diffusion-benchmarks,
# README): stock diffusers, fp16, SDPA, on an A100 80GB SXM, 50 steps of "A photo of a cat" at the models'
# default sizes and guidance (two samples per step), in denoising steps per second.
PUBLISHED = {"sd15": ("Diffusers (fp16, SDPA)", 31.44), "sdxl": ("Diffusers (fp16, SDPA)", 8.43)}


def throughput_section() -> str:
    """The time model (FLOPs / (peak rate x efficiency)) against measured throughput: the FLOPs the estimate
    counts for one denoising step (two samples, guidance) at fp16 times the published steps per second is
    the rate the A100 reached; over its fp16 peak, the efficiency that run had, beside the 0.35 assumed."""
    from bench.estimate import GPUS, Variant, arch_folder, estimate_method

    peak = GPUS["A100-80GB"]["tflops"]["fp16"]
    rows = []
    for model, (setup, its) in PUBLISHED.items():
        # Textual Inversion's sampling step is the base UNet's own (it changes no weight).
        cfg = compose_cfg(f"model={model}", "method=[textual_inversion]", "results_dir=/tmp/unused", "train.batch_size=1")
        r = estimate_method(cfg, "textual_inversion", arch_folder(cfg.model), variant=Variant.parse("fp16"))
        gflop = r["gen_step_flops"] / 1e9
        reached = gflop * its / 1e3
        rows.append({"model": model, "published (A100 80GB SXM)": f"{setup}: {its} it/s", "gen step GFLOP (estimate)": gflop,
                     "TFLOP/s reached": reached, "efficiency reached (of 312 fp16)": reached / peak,
                     "estimated s/step at 0.35": gflop / (peak * 1e3 * 0.35), "measured s/step": 1 / its})
    table = pd.DataFrame(rows)
    reached = ", ".join(f"{m} {e:.2f}" for m, e in zip(table.model, table["efficiency reached (of 312 fp16)"]))
    return ("\n## The time column against published throughput\n\n"
            "fal.ai's stable-diffusion-benchmarks (github.com/fal-ai/stable-diffusion-benchmarks, README: stock diffusers, fp16, "
            "SDPA, A100 80GB SXM, 50 steps at each model's default size and guidance) against the FLOPs this estimate counts for one "
            "denoising step (two samples with guidance, the base UNet). The fraction of the A100's fp16 peak those runs reached "
            f"({reached}) is what to set `estimate.efficiency` from (the time column assumes 0.35): a measured sampling rate, "
            "not a training one (training steps add the backward pass and the optimizer). No published SD 3.5 or FLUX training "
            "throughput with a stated set-up was found to compare with.\n\n" + table.to_markdown(index=False, floatfmt=".3g") + "\n")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", action="store_true")
    p.add_argument("--models", nargs="*", default=["sd15", "sd21", "sdxl", *DIT])
    p.add_argument("--skip-micro", action="store_true", help="only the SD-scale tables (to run models in parallel processes)")
    p.add_argument("--out", type=Path, default=OUT, help="where --write writes")
    p.add_argument("--skip-throughput", action="store_true", help="leave out the comparison with published sampling throughputs")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    register()
    from bench.estimate import estimate, render

    start = time.perf_counter()
    micro = pd.DataFrame([] if args.skip_micro else micro_rows(args.steps))
    parts = [] if args.skip_micro else [f"# mode=estimate against real trainings, and at SD scale\n\n`python benchmarks/estimate.py --steps {args.steps} --threads {args.threads}`\n\n"
             f"## Micro model: estimate (architecture only, fake tensors, `estimate.device=cpu`) vs measured training ({args.steps} steps, batch 4, {args.threads} thread)\n\n"
             "Memory: the estimate's peak of live tensors against the run's measured CPU tensor peak (both include the model weights). "
             "GFLOP/s reached: the estimated FLOPs of a training step times the measured steps/s; similar across methods when the FLOP "
             "count follows the work (small ops run below the CPU's rate, so the adapters' share of tiny matmuls lowers theirs).\n\n",
             micro.to_markdown(index=False, floatfmt=".3g"), "\n"]
    from bench.estimate import with_model_training_defaults

    for model in args.models:
        # Each model trained as it is trained (batch 1, its experiment's steps): what `mode=estimate model=<name>` does.
        if model in DIT:
            methods = [m for m in DIT_METHODS if not (model == "flux2_klein" and m == "textual_inversion")]  # klein: no CLIP encoder
            cfg = compose_cfg(f"model={model}", "results_dir=/tmp/unused", f"estimate.variants={DIT_VARIANTS}", "estimate.gpu=H100-SXM",
                              f"method=[{','.join(methods)}]", f"method.lora.target_modules={BOTH_STREAMS}",
                              *(f"method.{m}.adapter.target_modules={BOTH_STREAMS}" for m in DIT_METHODS if m == "lokr"))
        else:
            cfg = compose_cfg(f"model={model}", "results_dir=/tmp/unused")
        cfg, note = with_model_training_defaults(cfg, set())
        started = time.perf_counter()
        table = estimate(cfg)
        print(f"{model}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        parts += ["\n", render(cfg, table, note).replace("# Estimated cost", "## Estimated cost", 1)]
    if not args.skip_throughput:
        parts.append(throughput_section())
    parts.append(f"\n{time.perf_counter() - start:.0f} s for everything above.\n")
    text = "".join(parts)
    print(text)
    if args.write:
        from bench.io import atomic_write_text

        atomic_write_text(args.out, text)
        print(f"written: {args.out}")


if __name__ == "__main__":
    main()
