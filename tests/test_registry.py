"""Adding a metric is one module and one registry entry: scoring, titles, validity's proxies and the
regression check all read metrics.REGISTRY (shown with a metric registered in the test)."""


import torch
from PIL import Image

import metrics
from bench.score import sweep_rows
from bench.sweep import SweepPrompt
from metrics.base import MetricInfo


class FakeEncoder:
    """A CLIP space stand-in: an image's feature is its mean colour, normalised."""

    name = "fake"
    dim = 3  # what the Fréchet distance's feature module reads (bench.clip.CachedImageEncoder.dim)

    def clear(self) -> None:
        pass

    def images(self, images):
        feats = torch.tensor([[float(c) + 1 for c in im.convert("RGB").resize((1, 1)).getpixel((0, 0))] for im in images])
        return torch.nn.functional.normalize(feats, dim=-1)

    def texts(self, texts):
        return torch.nn.functional.normalize(torch.ones(len(texts), 3), dim=-1)


class Concept:
    images = [Image.new("RGB", (8, 8), c) for c in ("red", "pink")]
    token = "sks"
    world_concept = None


def red_share(sweep) -> list[dict]:
    """The new metric: per subject image, the share of its red channel (a toy, but scored like any metric)."""
    return [sweep.row(k, RED, sweep.images[k].getpixel((0, 0))[0] / 255, "pixels") for k in sweep.subject()]


RED = MetricInfo("red_share", "share", True, "share of red in the image's corner pixel", title="red share", measured_by="pixels", proxy=True, score=red_share)


def test_a_registered_metric_is_scored_titled_validated_and_checked(monkeypatch):
    monkeypatch.setattr(metrics, "REGISTRY", (*metrics.REGISTRY, RED))
    monkeypatch.setattr(metrics, "QUALITY", {**metrics.QUALITY, RED.name: RED})
    import bench.score

    monkeypatch.setattr(bench.score, "REGISTRY", metrics.REGISTRY)
    prompts = [SweepPrompt("instance_0", "instance", "a sks crescent"), SweepPrompt("unrelated_0", "unrelated", "a red star")]
    images = {(p.prompt_id, s, w): Image.new("RGB", (8, 8), (int(200 * w), 10 * s, 50)) for p in prompts for s in (0, 1) for w in (0.0, 1.0)}
    base = {(p.text, s): images[(p.prompt_id, s, 0.0)] for p in prompts for s in (0, 1)}
    rows = sweep_rows(FakeEncoder(), Concept(), prompts, images, base, {})
    red = sorted((r["seed"], r["weight"], r["value"]) for r in rows if r["metric"] == "red_share")
    assert red == [(0, 0.0, 0.0), (0, 1.0, 200 / 255), (1, 0.0, 0.0), (1, 1.0, 200 / 255)]  # subject images only
    assert {"clip_t", "clip_i", "drift", "diversity", "blank", "cmmd", "fd_fake"} <= {r["metric"] for r in rows}
    assert metrics.title("red_share") == "red share" and metrics.higher_is_better("red_share") is True
    assert "red_share" in metrics.proxies() and "red_share" in metrics.checked()


def test_every_registered_metric_declares_what_the_report_and_check_read():
    for info in metrics.REGISTRY:
        # Scored from the sweep's images, or by the model itself (the validation loss: bench.worker.validation_loss).
        assert info.name and info.unit and info.description and info.display and (info.score is not None or info.measured_by == "model"), info.name
        assert info.measured_by in ("clip", "dino", "oracle", "pixels", "inception", "model"), info.name
    # The regression check reads ground truth and the proxies; not the diagnostics.
    assert set(metrics.checked()) == {"presence", "clip_t", "clip_i", "cmmd", "drift"}
    assert metrics.title("fid_inception") == "fid inception" and metrics.higher_is_better("fd_microclip") is False
