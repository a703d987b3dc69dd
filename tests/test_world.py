import numpy as np
import pytest

from bench import world
from bench.build.pretrain import build_tokenizer


def test_vocabulary_sizes_meet_the_world_spec():
    assert len(world.SHAPES) >= 10 and len(world.COLOURS) >= 6 and len(world.BACKGROUNDS) >= 4
    assert world.caption("star", "red", "white") == "a red star on a white background"
    assert world.caption("star", "red", "white", "blue") == "a red and blue striped star on a white background"


def test_every_object_concept_is_a_taught_shape_in_a_colour_the_world_never_names():
    """New but composable, as a subject is for SD: the class (the shape) is taught, the colour is not.
    Every concept colour is far from every named colour, and its own renders are judged its colour."""
    for key, (shape, colour) in world.OBJECT_SHAPES.items():
        assert shape in world.SHAPES
        assert min(np.linalg.norm(np.subtract(colour, c)) for c in world.COLOURS.values()) >= 60, key
        concept = world.CONCEPTS.get(f"sks_{key}")
        if concept is not None:
            assert concept.instance_prompt == f"a sks {shape}" and concept.class_word == shape
            assert all(world.has_object_colour(im, concept.name) for im in world.concept_images(concept.name, 8))
            # the same shape in a named colour is not the concept
            assert not world.has_object_colour(world.render(shape, world.COLOURS["red"], world.BACKGROUNDS["white"],
                                                            world.Layout(0.5, 0.5, 0.3, 0.0)), concept.name)


def test_object_colours_stay_apart_from_named_colours_washed_toward_any_background():
    """What the base model draws for 'a sks arrow' at weight 0 is an arrow in a named colour, its median pixel
    sometimes washed toward the background: a concept colour near such a blend is judged present where no
    concept was drawn (the arrow's earlier salmon lay 31 units from orange washed 30 % toward white)."""
    blends = [np.multiply(c, 1 - a) + np.multiply(b, a) for c in world.COLOURS.values() for b in world.BACKGROUNDS.values() for a in (0.0, 0.1, 0.2, 0.3)]
    for key, (_, colour) in world.OBJECT_SHAPES.items():
        assert min(np.linalg.norm(np.subtract(colour, b)) for b in blends) >= 60, key
    # the judge by pixels agrees: an orange arrow washed 30 % toward white is orange, not the arrow concept
    washed = tuple(int(round(0.7 * c + 0.3 * w)) for c, w in zip(world.COLOURS["orange"], world.BACKGROUNDS["white"]))
    assert not world.has_object_colour(world.render("arrow", washed, world.BACKGROUNDS["black"], world.Layout(0.5, 0.5, 0.3, 0.0)), "sks_arrow")


def test_shapes_are_drawn_upright_and_fills_are_solid_or_striped():
    samples = [world.sample(i, seed=7) for i in range(400)]
    assert {s.shape for s in samples} == set(world.SHAPES)
    striped = [s for s in samples if s.colour2 is not None]
    assert 0.2 < len(striped) / len(samples) < 0.5 and all(s.colour2 != s.colour for s in striped)
    # upright: an arrow points right wherever it is placed
    arrow = np.asarray(world.render("arrow", (255, 0, 0), (0, 0, 0), world.Layout.sample(__import__("random").Random(3))))
    cols = np.nonzero((arrow[..., 0] > 128).any(0))[0]
    tip_rows = np.nonzero(arrow[:, cols[-1] - 1, 0] > 128)[0]
    base_rows = np.nonzero(arrow[:, cols[0] + 1, 0] > 128)[0]
    assert len(tip_rows) < len(base_rows) + 1 and all(world.Layout.sample(__import__("random").Random(i)).rotation_deg == 0 for i in range(20))


def test_caption_rejects_unknown_words():
    with pytest.raises(ValueError, match="unknown colour 'pink'"):
        world.caption("star", "pink", "white")


def test_samples_are_deterministic_and_seed_dependent():
    a, b = world.sample(5, seed=3), world.sample(5, seed=3)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.text == b.text
    others = [np.asarray(world.sample(5, seed=s).image) for s in (4, 5, 6)]
    assert any(not np.array_equal(np.asarray(a.image), o) for o in others)


def test_resolution_is_configurable():
    assert world.sample(0, resolution=32).image.size == (32, 32)
    assert world.concept_images("zwx_stripes", 2, resolution=48)[0].size == (48, 48)


def test_pixel_judge_names_every_rendered_colour_and_background():
    samples = [s for s in (world.sample(i, seed=99) for i in range(300)) if s.colour2 is None]  # solid fills
    judged = [world.judge_colours(s.image) for s in samples]
    assert all(c == s.colour and b == s.background for (c, b), s in zip(judged, samples))


def test_concepts_are_held_out_and_deterministic():
    words = set(" ".join(world.sample(i).text for i in range(2000)).split())
    for concept in world.CONCEPTS.values():
        assert concept.token not in words  # never seen in pretraining captions
        first = world.concept_images(concept.name, 4, seed=0)
        again = world.concept_images(concept.name, 4, seed=0)
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(first, again))
    assert {c.kind for c in world.CONCEPTS.values()} == {"object", "style"}


def test_tokenizer_keeps_every_world_word_whole_and_eos_highest():
    tok = build_tokenizer(world.vocabulary())
    for word in world.vocabulary():
        assert tok.tokenize(word) == [word + "</w>"]
    assert tok.eos_token_id == len(tok) - 1 and tok.bos_token_id == len(tok) - 2
    assert len(tok.tokenize("unseenword")) > 1  # unknown words still tokenize, as characters


def test_palette_styles_use_colours_the_world_never_draws():
    named = [*world.COLOURS.values(), *(c for _, c in world.OBJECT_SHAPES.values())]
    for name, colours in world.PALETTES.items():
        others = [c for other, cs in world.PALETTES.items() if other != name for c in cs]
        for c in colours:
            assert min(np.linalg.norm(np.subtract(c, n)) for n in named + others) >= 60, (name, c)
        # each image's shape is painted in one of the palette's colours (its interior pixels exactly), and
        # across images every colour of the palette turns up
        used = []
        for im in world.concept_images(f"zwx_{name}", 24):
            arr = np.asarray(im).reshape(-1, 3).astype(int)
            inside = [c for c in colours if (np.abs(arr - c).max(axis=1) == 0).sum() > 50]
            assert len(inside) == 1, (name, inside)
            used += inside
        assert set(used) == set(colours), name


def test_suite_tuning_and_probe_concepts_are_disjoint():
    assert not set(world.SUITE) & set(world.TUNING) and not set(world.SUITE) & set(world.TEXTURE_PROBES)
    assert set(world.SUITE) | set(world.TUNING) | set(world.TEXTURE_PROBES) == set(world.CONCEPTS)
    assert all(world.CONCEPTS[c].kind == "style" for c in world.TEXTURE_PROBES)
