from bench import world
from bench.quality import clip_zero_shot_accuracy


def test_micro_clip_ranks_the_true_caption_first(micro_encoder):
    samples = [s for s in (world.sample(i, seed=4242) for i in range(120)) if s.colour2 is None][:60]
    captions = [world.caption(s, c, b) for s in world.SHAPES for c in world.COLOURS for b in world.BACKGROUNDS]
    sims = micro_encoder.images([s.image for s in samples]) @ micro_encoder.texts(captions).T
    truth = [captions.index(world.caption(s.shape, s.colour, s.background)) for s in samples]
    top1 = sum(int(sims[i].argmax()) == t for i, t in enumerate(truth)) / len(samples)
    # Chance is 1/240; the world's attributes are easy, so micro CLIP should nearly always be right.
    assert top1 >= 0.8


def test_micro_clip_zero_shot_shape_and_colour(micro_encoder):
    acc = clip_zero_shot_accuracy(micro_encoder, n=100, seed=777)
    # The targets a scorer must meet (issue 2); the shipped micro CLIP measures 1.00 / 1.00 on 400
    # other images (results/benchmarks/base_quality.md). Chance is 0.1 for shape and 0.17 for colour.
    assert acc["clip_shape_accuracy"] >= 0.95 and acc["clip_colour_accuracy"] >= 0.98, acc
