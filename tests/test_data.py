import numpy as np
import pytest
from PIL import Image

from bench import world
from bench.data import ConceptDataError, load_concepts, load_folder, load_world_concept


def _write_images(folder, n=3, size=(80, 60), mode="RGB"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new(mode, size, (200, 10, 10) if mode == "RGB" else 128).save(folder / f"img{i}.png")


def test_kohya_folder_naming_gives_prompt_token_class_and_repeats(tmp_path):
    folder = tmp_path / "10_sks dog"
    _write_images(folder)
    (folder / "img1.txt").write_text("a sks dog on a sofa\n")
    data = load_folder(folder, resolution=64)
    assert (data.instance_prompt, data.token, data.class_word, data.repeats) == ("sks dog", "sks", "dog", 10)
    assert data.class_prompt == "dog"
    assert data.captions == ["sks dog", "a sks dog on a sofa", "sks dog"]
    assert all(im.size == (64, 64) and im.mode == "RGB" for im in data.images)


def test_plain_folder_needs_an_instance_prompt(tmp_path):
    _write_images(tmp_path / "mydog")
    with pytest.raises(ConceptDataError, match="data.instance_prompt"):
        load_folder(tmp_path / "mydog", 64)
    data = load_folder(tmp_path / "mydog", 64, instance_prompt="a photo of sks dog")
    assert (data.token, data.class_word, data.class_prompt) == ("sks", "dog", "a photo of dog")


def test_corrupt_image_error_names_the_file(tmp_path):
    folder = tmp_path / "5_sks cat"
    _write_images(folder, 2)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ConceptDataError, match="broken.jpg"):
        load_folder(folder, 64)


def test_empty_and_missing_folders_are_named(tmp_path):
    (tmp_path / "3_sks cat").mkdir()
    (tmp_path / "3_sks cat" / "notes.txt").write_text("no images here")
    with pytest.raises(ConceptDataError, match="3_sks cat.*holds no images"):
        load_folder(tmp_path / "3_sks cat", 64)
    with pytest.raises(ConceptDataError, match="data.path.*does not exist"):
        load_folder(tmp_path / "nowhere", 64)


def test_odd_images_are_converted_or_rejected(tmp_path):
    folder = tmp_path / "2_sks cat"
    _write_images(folder, 1, mode="L")
    rgba = Image.new("RGBA", (70, 90), (0, 0, 0, 0))
    rgba.save(folder / "transparent.png")
    data = load_folder(folder, 32)
    assert all(im.mode == "RGB" and im.size == (32, 32) for im in data.images)
    assert data.images[1].getpixel((16, 16)) == (255, 255, 255)  # transparency composited on white
    Image.new("RGB", (4, 4)).save(folder / "tiny.png")
    with pytest.raises(ConceptDataError, match="tiny.png.*smaller"):
        load_folder(folder, 32)


def test_world_concept_and_config_dispatch(tmp_path):
    data = load_world_concept("sks_crescent", 6, 64)
    assert len(data.images) == 6 and data.token == "sks" and data.instance_prompt == world.CONCEPTS["sks_crescent"].instance_prompt
    assert data.kind == "object" and load_world_concept("zwx_stripes", 2, 64).kind == "style"
    [stripes] = load_concepts({"concepts": ["zwx_stripes"], "n_images": 4}, 64)
    assert stripes.captions == ["a shape in zwx style"] * 4
    with pytest.raises(ConceptDataError, match=r"data.concepts\[0\].*'nope'"):
        load_concepts({"concepts": ["nope"]}, 64)
    with pytest.raises(ConceptDataError, match="data.concepts: no concept"):
        load_concepts({}, 64)
    with pytest.raises(ConceptDataError, match="selected twice"):
        load_concepts({"concepts": ["sks_crescent", "sks_crescent"]}, 64)
    # World concepts and user folders in one selection, folders with a kind.
    folder = tmp_path / "4_sks mug"
    _write_images(folder, 2)
    both = load_concepts({"concepts": ["sks_heart", str(folder)], "kind": "object"}, 64)
    assert [c.name for c in both] == ["sks_heart", "4_sks_mug"] and both[1].token == "sks"


def test_fingerprint_changes_with_the_data_and_only_with_it():
    a, again = load_world_concept("sks_crescent", 4, 64), load_world_concept("sks_crescent", 4, 64)
    assert a.fingerprint() == again.fingerprint()
    assert a.fingerprint() != load_world_concept("sks_crescent", 5, 64).fingerprint()
    assert a.fingerprint() != load_world_concept("sks_crescent", 4, 64, seed=1).fingerprint()


# Every image mode a user's folder may hold, against pixels computed here by hand (numpy), not by Pillow's convert.
def _mode_cases(tmp_path):
    grey16 = np.full((16, 16), 40000, np.uint16)  # 40000 / 257 = 155.6 -> 156
    Image.fromarray(grey16).save(tmp_path / "grey16.png")  # Pillow writes a 16-bit PNG, reads it as I;16 or I
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no black, full magenta and yellow: red
    cmyk.save(tmp_path / "cmyk.jpg", quality=100)
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(tmp_path / "palette.png")
    la = Image.new("LA", (16, 16), (100, 0))  # fully transparent grey: white after compositing
    la.save(tmp_path / "la.png")
    half = Image.new("RGBA", (16, 16), (200, 0, 0, 128))  # half-transparent red over white
    half.save(tmp_path / "half.png")
    f32 = Image.fromarray(np.full((16, 16), 0.5, np.float32), "F")
    f32.save(tmp_path / "float.tiff")
    rotated = Image.new("RGB", (32, 16), (0, 0, 255))
    rotated.paste((255, 255, 0), (0, 0, 16, 16))  # left half yellow, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated.save(tmp_path / "exif.jpg", exif=exif, quality=100)
    return {
        "grey16.png": (156, 156, 156),
        "cmyk.jpg": (255, 0, 0),
        "palette.png": (10, 200, 30),
        "la.png": (255, 255, 255),
        "half.png": (round(200 * 128 / 255 + 255 * 127 / 255), round(255 * 127 / 255), round(255 * 127 / 255)),
        "float.tiff": (128, 128, 128),
    }


def test_every_image_mode_becomes_the_right_rgb_pixels(tmp_path):
    from bench.data import read_image

    for name, expected in _mode_cases(tmp_path).items():
        im = read_image(tmp_path / name, 16)
        got = np.asarray(im)[8, 8].astype(int)
        assert im.mode == "RGB" and np.abs(got - expected).max() <= 3, (name, got, expected)
    # EXIF orientation 6: displayed rotated a quarter turn clockwise, so the yellow half is on top.
    shown = np.asarray(read_image(tmp_path / "exif.jpg", 16).resize((16, 16)))
    assert shown[2, 8, 2] < 60 and shown[13, 8, 2] > 200, (shown[2, 8], shown[13, 8])


def test_decompression_bombs_and_non_utf8_captions_are_refused_by_name(tmp_path, monkeypatch):
    folder = tmp_path / "5_sks dog"
    _write_images(folder, 2, size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4096 > 2 x 1000: a "bomb" at this limit
    with pytest.raises(ConceptDataError, match=r"img0.png: refused as a possible decompression bomb"):
        load_folder(folder, 32)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # between the limit and twice it: Pillow only warns
    with pytest.raises(ConceptDataError, match="decompression bomb"):
        load_folder(folder, 32)
    monkeypatch.undo()
    (folder / "img1.txt").write_bytes("a sks dog on a caf\xe9 table".encode("latin-1"))
    with pytest.raises(ConceptDataError, match=r"img1.txt: caption is not UTF-8"):
        load_folder(folder, 32)


@pytest.mark.parametrize("prompt", ["a photo of dog", "a dog", "photo dog", "the sks", "a sks sks"])
def test_a_common_word_or_the_class_word_is_never_the_token(tmp_path, prompt):
    """'a photo of dog' has no rare token: binding 'of' (or 'photo', or the class word) would retrain a word
    every prompt uses, so the folder is refused naming the key, with the form that works."""
    _write_images(tmp_path / "mydog")
    with pytest.raises(ConceptDataError, match=r"data\.(instance_prompt|class_word)"):
        load_folder(tmp_path / "mydog", 64, instance_prompt=prompt)


def test_kohya_names_with_zero_repeats_or_a_common_first_word_are_refused_and_a_set_prompt_wins(tmp_path):
    _write_images(tmp_path / "0_sks dog")
    with pytest.raises(ConceptDataError, match="data.path: .*0 repeats.*kohya skips"):
        load_folder(tmp_path / "0_sks dog", 64)
    _write_images(tmp_path / "10_a dog")
    with pytest.raises(ConceptDataError, match="data.path: the folder name '10_a dog'"):
        load_folder(tmp_path / "10_a dog", 64)
    # A prompt set beside a kohya folder: its token is the word before the class word, not its first word.
    data = load_folder(tmp_path / "10_a dog", 64, instance_prompt="a photo of ohwx dog")
    assert (data.token, data.class_word, data.repeats) == ("ohwx", "dog", 10)


def test_a_missing_or_file_entry_is_named_by_the_key_that_gave_it(tmp_path):
    _write_images(tmp_path / "10_sks dog")
    (tmp_path / "notes.txt").write_text("x")
    cfg = {"concepts": [str(tmp_path / "10_sks dog"), str(tmp_path / "10_sks cat")]}
    with pytest.raises(ConceptDataError, match=r"^data\.concepts\[1\]: concept folder .*10_sks cat does not exist"):
        load_concepts(cfg, 64)
    with pytest.raises(ConceptDataError, match=r"^data\.path: .*notes\.txt is a file; a concept is a folder"):
        load_concepts({"path": str(tmp_path / "notes.txt")}, 64)


def test_an_unreadable_folder_is_named(tmp_path, monkeypatch):
    """A folder the user may not list (as root the permission bits do not stop us, so listing is made to fail)."""
    from pathlib import Path

    _write_images(tmp_path / "10_sks dog")
    real = Path.iterdir

    def refuse(self):
        if self.name == "10_sks dog":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", refuse)
    with pytest.raises(ConceptDataError, match=r"^data\.path: cannot read concept folder .*10_sks dog \(Permission denied\)"):
        load_folder(tmp_path / "10_sks dog", 64)
