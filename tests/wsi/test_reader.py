"""SlideReader: backends, levels, mpp, regions, thumbnails and every documented error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gigastream import SlideError, SlideReader
from gigastream.wsi.backends import ArrayReader, OpenSlideReader, TiffSlideReader
from gigastream.wsi.reader import READ_ERROR_FIX, SlideReadError
from gigastream.wsi.resample import downsample2


def test_cmu1_metadata_and_reads(cmu1):
    with SlideReader.open(cmu1) as slide:
        assert isinstance(slide, OpenSlideReader)
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.objective_power == 20
        region = slide.region((100, 200), (64, 48), level=0)
        assert region.shape == (48, 64, 3) and region.dtype == np.uint8
        half = slide.region((100, 200), (32, 24), mpp=0.998)
        assert half.shape == (24, 32, 3)
        thumb = slide.thumbnail(256)
        assert max(thumb.shape[:2]) == 256
        whole = slide.read_at_mpp(8.0)
        assert whole.shape[:2] == (round(2967 / (8 / 0.499)), round(2220 / (8 / 0.499)))


def test_cmu1_with_tiffslide_agrees(cmu1):
    with SlideReader.open(cmu1, backend="tiffslide") as ts, SlideReader.open(cmu1) as os_:
        assert isinstance(ts, TiffSlideReader)
        assert ts.mpp == pytest.approx(0.499) and ts.dimensions == os_.dimensions
        a = ts.region((500, 600), (128, 128), level=0).astype(int)
        b = os_.region((500, 600), (128, 128), level=0).astype(int)
        assert np.abs(a - b).mean() < 3  # two JPEG decoders


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_written_pyramid_levels_and_mpp(tiff_slide, backend):
    path, image = tiff_slide
    with SlideReader.open(path, backend=backend) as slide:
        assert slide.backend == backend
        assert [lv.dimensions for lv in slide.levels] == [
            (1300, 1000),
            (650, 500),
            (325, 250),
            (163, 125),
        ]
        assert slide.mpp == pytest.approx(0.25)
        expected = image
        for level in range(len(slide.levels)):
            w, h = slide.levels[level].dimensions
            got = slide.read_level(level, 0, 0, w, h).astype(int)
            assert np.abs(got - expected).mean() < 4, level
            expected = downsample2(expected)


def test_auto_backend_for_generic_tiff_is_openslide(tiff_slide):
    with SlideReader.open(tiff_slide[0]) as slide:
        assert slide.backend == "openslide"


def test_mpp_read_picks_level_and_crops_are_exact(tiff_slide):
    with SlideReader.open(tiff_slide[0]) as slide:
        res = slide.resolution(1.0)
        assert (res.level, res.scale) == (2, 1.0)
        res = slide.resolution(0.7)  # between level 1 (0.5) and level 2 (1.0)
        assert res.level == 1 and res.scale == pytest.approx(1.4)
        whole = slide.read_scaled(res, 0, 0, *res.dimensions)
        assert whole.shape[:2] == (round(500 / 1.4), round(650 / 1.4))
        crop = slide.read_scaled(res, 101, 37, 90, 70)
        np.testing.assert_array_equal(crop, whole[37:107, 101:191])
        np.testing.assert_array_equal(slide.read_at_mpp(0.7), whole)


def test_region_at_mpp_uses_level0_location(tiff_slide):
    with SlideReader.open(tiff_slide[0]) as slide:
        a = slide.region((400, 200), (50, 40), mpp=1.0)
        b = slide.region((400, 200), (50, 40), level=2)
        c = slide.read_level(2, 100, 50, 50, 40)
        np.testing.assert_array_equal(b, c)
        np.testing.assert_array_equal(a, b)


def test_array_reader_pyramid_and_out_of_bounds():
    image = np.zeros((600, 1000, 3), np.uint8)
    slide = SlideReader.from_array(image, mpp=0.5, objective_power=20)
    assert isinstance(slide, ArrayReader)
    assert [lv.dimensions for lv in slide.levels] == [(1000, 600), (500, 300), (250, 150)]
    region = slide.read_level(0, 990, -5, 20, 10)
    assert (
        (region[:5] == 255).all()
        and (region[5:, :10] == 0).all()
        and (region[5:, 10:] == 255).all()
    )
    chw = SlideReader.from_array(np.zeros((3, 40, 50), np.uint8), mpp=1.0)
    assert chw.dimensions == (50, 40)


def test_thumbnail_without_mpp_and_mpp_override(tmp_path):
    slide = SlideReader.from_array(np.full((300, 400, 3), 200, np.uint8), mpp=None)
    assert slide.mpp is None
    assert slide.thumbnail(100).shape == (75, 100, 3)
    with pytest.raises(SlideError, match="no microns-per-pixel metadata; pass mpp"):
        slide.read_at_mpp(2.0)
    with pytest.raises(SlideError, match="no microns-per-pixel"):
        slide.region((0, 0), (10, 10), mpp=1.0)


def test_image_file_needs_user_mpp(tmp_path):
    from PIL import Image

    path = tmp_path / "tile.png"
    Image.fromarray(np.full((64, 64, 3), 180, np.uint8)).save(path)
    with SlideReader.open(path) as slide:
        with pytest.raises(SlideError, match=r"tile\.png: the slide has no microns-per-pixel"):
            slide.require_mpp()
    with SlideReader.open(path, mpp=0.5) as slide:
        assert slide.read_at_mpp(1.0).shape == (32, 32, 3)


def test_user_mpp_overrides_metadata(cmu1):
    with SlideReader.open(cmu1, mpp=0.25) as slide:
        assert slide.mpp == 0.25


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b""), "file is empty"),
        (lambda p: p.write_bytes(b"this is not a slide at all" * 10), "unsupported format"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
    ids=["missing", "empty", "unsupported", "directory"],
)
def test_open_errors_name_file_and_cause(tmp_path, make, message):
    path = tmp_path / "bad.xyz"
    make(path)
    with pytest.raises(SlideError, match=message) as info:
        SlideReader.open(path)
    assert str(path) in str(info.value)


def test_truncated_tiff_is_reported(tmp_path, tiff_slide):
    data = tiff_slide[0].read_bytes()
    path = tmp_path / "truncated.tif"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match="truncated") as info:
        SlideReader.open(path)
    assert str(path) in str(info.value)


def test_truncated_svs_is_reported(tmp_path, cmu1):
    data = cmu1.read_bytes()
    path = tmp_path / "cut.svs"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SlideError, match=r"cut\.svs.*truncated"):
        SlideReader.open(path)


@pytest.mark.parametrize("backend", ["auto", "openslide", "tiffslide"])
@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("missing.svs", lambda p, tif: None, "file not found"),
        ("notes.svs", lambda p, tif: p.write_text("not a slide\n" * 20), "not a readable TIFF"),
        ("notes.ndpi", lambda p, tif: p.write_text("not a slide\n" * 20), "cannot open it"),
        ("cut.tif", lambda p, tif: p.write_bytes(tif[: len(tif) // 2]), "truncated"),
        ("cut.dat", lambda p, tif: p.write_bytes(tif[: len(tif) // 2]), "truncated"),
        ("header.tif", lambda p, tif: p.write_bytes(tif[:200]), "truncated or corrupt"),
    ],
)
def test_open_errors_with_every_backend(tmp_path, tiff_slide, backend, name, make, message):
    path = tmp_path / name
    make(path, tiff_slide[0].read_bytes())
    with pytest.raises(SlideError, match=message) as info:
        SlideReader.open(path, backend=backend)
    assert str(info.value).startswith(f"{path}: ")


def test_garbage_tiff_is_reported(tmp_path):
    path = tmp_path / "garbage.tif"
    path.write_bytes(b"II*\x00" + b"\xff" * 100)
    with pytest.raises(SlideError, match=r"garbage\.tif"):
        SlideReader.open(path)


def test_bad_arguments_raise(tiff_slide):
    with SlideReader.open(tiff_slide[0]) as slide:
        with pytest.raises(SlideError, match="exactly one of level= or mpp="):
            slide.region((0, 0), (10, 10))
        with pytest.raises(SlideError, match="exactly one of level= or mpp="):
            slide.region((0, 0), (10, 10), level=0, mpp=1.0)
        with pytest.raises(SlideError, match="level 9 does not exist"):
            slide.region((0, 0), (10, 10), level=9)
        with pytest.raises(SlideError, match="size must be positive"):
            slide.region((0, 0), (0, 10), level=0)
        with pytest.raises(SlideError, match="target mpp must be a positive number"):
            slide.resolution(-1.0)
    with pytest.raises(SlideError, match="unknown backend"):
        SlideReader.open(tiff_slide[0], backend="vips")
    with pytest.raises(SlideError, match="mpp must be a positive number"):
        SlideReader.from_array(np.zeros((8, 8, 3), np.uint8), mpp=0.0)
    with pytest.raises(SlideError, match=r"expected an \(H, W, 3\) RGB image"):
        SlideReader.from_array(np.zeros((8, 8, 5), np.uint8), mpp=1.0)
    with pytest.raises(SlideError, match="expected uint8"):
        SlideReader.from_array(np.zeros((8, 8, 3), np.float32), mpp=1.0)


def test_unreadable_image_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG not really")
    with pytest.raises(SlideError, match=r"broken\.png: cannot read the image"):
        SlideReader.open(path, mpp=1.0)


def test_slide_error_is_a_runtime_error():
    assert issubclass(SlideError, RuntimeError)  # the CLI reports RuntimeErrors cleanly


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_corrupt_tile_mid_stream_raises_slide_read_error(tiff_slide, corrupt_slide, backend):
    with (
        SlideReader.open(corrupt_slide, backend=backend) as slide,
        SlideReader.open(tiff_slide[0], backend=backend) as intact,
    ):
        # regions that do not touch the corrupt tile read as in the intact file
        for args in [(1, 0, 0, 256, 256), (1, 512, 256, 138, 244), (0, 0, 0, 1300, 1000)]:
            np.testing.assert_array_equal(slide.read_level(*args), intact.read_level(*args))
        with pytest.raises(SlideReadError) as info:
            slide.read_level(1, 300, 200, 64, 100)  # rows 256.. of it are in the tile
        message = str(info.value)
        assert message.startswith(f"{corrupt_slide}: reading level 1 region ")
        assert "x=300, y=200, w=64, h=100 (level pixels)" in message
        assert message.endswith(READ_ERROR_FIX)
        assert info.value.__cause__ is not None  # chained from the backend's exception
        assert (info.value.path, info.value.level, info.value.region) == (
            corrupt_slide,
            1,
            (300, 200, 64, 100),
        )
        assert isinstance(info.value, SlideError)  # what a trainer catches per slide
        res = slide.resolution(0.7)  # resized from level 1
        assert res.level == 1
        with pytest.raises(SlideReadError, match=r"corrupt\.tif: reading level 1 region"):
            slide.read_scaled(res, 0, 0, *res.dimensions)
        with pytest.raises(SlideReadError, match="re-export it or remove it from the manifest"):
            slide.region((600, 600), (32, 32), mpp=0.5)  # level 1 (300, 300)
        # the failed read leaves the reader usable (OpenSlide's handle is reopened)
        np.testing.assert_array_equal(
            slide.read_level(1, 0, 0, 64, 64), intact.read_level(1, 0, 0, 64, 64)
        )


def test_read_errors_name_the_slide_and_the_fix():
    class Broken(ArrayReader):
        def _read_level(self, level, x, y, width, height):
            raise OSError("tile 7: unexpected end of data")

    slide = Broken(np.zeros((64, 64, 3), np.uint8), mpp=1.0, path=Path("s.svs"))
    with pytest.raises(SlideReadError) as info:
        slide.read_level(0, 5, 6, 7, 8)
    assert str(info.value) == (
        "s.svs: reading level 0 region x=5, y=6, w=7, h=8 (level pixels) failed: "
        f"OSError: tile 7: unexpected end of data; {READ_ERROR_FIX}"
    )
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(SlideReadError, match=r"s\.svs: reading level 0 region"):
        slide.read_scaled(slide.resolution(2.0), 0, 0, 8, 8)


def test_openslide_backend_on_a_png_says_it_cannot_open(tmp_path):
    from PIL import Image

    path = tmp_path / "plain.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    with pytest.raises(SlideError, match=r"plain\.png: OpenSlide cannot open it"):
        SlideReader.open(path, backend="openslide")


def test_large_resized_reads_are_chunked_exactly(tiff_slide, monkeypatch):
    import gigastream.wsi.reader as reader_module

    with SlideReader.open(tiff_slide[0]) as slide:
        whole = slide.read_at_mpp(0.7)
        monkeypatch.setattr(reader_module, "MAX_READ_PIXELS", 20_000)
        np.testing.assert_array_equal(slide.read_at_mpp(0.7), whole)


def test_tiffs_openslide_does_not_read_go_to_tiffslide(tmp_path, image_factory):
    import tifffile

    image = image_factory(300, 400)
    stripped = tmp_path / "stripped.tif"  # not tiled: OpenSlide's generic-tiff refuses it
    tifffile.imwrite(
        stripped,
        image,
        photometric="rgb",
        resolution=(1e4 / 0.5, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
    )
    ome = tmp_path / "image.ome.tif"
    tifffile.imwrite(
        ome,
        image,
        photometric="rgb",
        tile=(128, 128),
        metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25},
    )
    for path, mpp in ((stripped, 0.5), (ome, 0.25)):
        with SlideReader.open(path) as slide:
            assert slide.backend == "tiffslide", path
            assert slide.mpp == pytest.approx(mpp)
            np.testing.assert_array_equal(slide.read_level(0, 0, 0, 400, 300), image)


@pytest.fixture(scope="module")
def aperio_like(tmp_path_factory, image_factory) -> Path:
    """A pyramid with a scanner's non-power-of-two downsamples: 2001x1501, 1000x750, 500x375."""
    import tifffile
    from PIL import Image

    image = image_factory(1501, 2001)
    path = tmp_path_factory.mktemp("aperio") / "aperio.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, (w, h) in enumerate([(2001, 1501), (1000, 750), (500, 375)]):
            level = image if i == 0 else np.asarray(Image.fromarray(image).resize((w, h)))
            tw.write(
                level,
                tile=(256, 256),
                compression="jpeg",
                photometric="rgb",
                subfiletype=0 if i == 0 else 1,
                resolution=(1e4 / (0.25 * 2001 / w), 1e4 / (0.25 * 1501 / h)),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
    return path


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_non_power_of_two_pyramid_crops_equal_the_whole(aperio_like, backend):
    rng = np.random.default_rng(0)
    with SlideReader.open(aperio_like, backend=backend) as slide:
        assert slide.levels[1].downsample == pytest.approx(2.001, abs=1e-3)
        for mpp, level in [(0.25, 0), (0.5, 1), (1.0, 2), (0.7, 1), (1.6, 2)]:
            res = slide.resolution(mpp)
            assert res.level == level
            whole = slide.read_at_mpp(mpp).astype(int)
            width, height = res.dimensions
            for _ in range(6):
                w, h = (int(rng.integers(8, min(300, size - 1))) for size in (width, height))
                x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
                crop = slide.read_scaled(res, x, y, w, h).astype(int)
                assert np.abs(crop - whole[y : y + h, x : x + w]).max() <= 1, (mpp, x, y, w, h)


def test_non_power_of_two_levels_read_the_same_with_both_backends(aperio_like):
    import tifffile

    with (
        SlideReader.open(aperio_like, backend="openslide") as os_,
        SlideReader.open(aperio_like, backend="tiffslide") as ts,
    ):
        for level in (1, 2):
            page = tifffile.imread(aperio_like, key=level)
            for x, y in [(0, 0), (1, 1), (301, 157), (130, 77)]:
                got = ts.read_level(level, x, y, 64, 48)
                np.testing.assert_array_equal(got, page[y : y + 48, x : x + 64])  # not 1 px off
                other = os_.read_level(level, x, y, 64, 48).astype(int)
                assert np.abs(other - got).mean() < 1, (level, x, y)


# ----------------------------------------------------------------------------- issue 16
def test_default_mpp_fills_in_only_a_slide_without_metadata(cmu1, tmp_path):
    from PIL import Image

    with SlideReader.open(cmu1, default_mpp=2.0) as slide:
        assert slide.mpp == pytest.approx(0.499)  # the slide's own metadata wins
    with SlideReader.open(cmu1, mpp=0.25, default_mpp=2.0) as slide:
        assert slide.mpp == 0.25  # an explicit mpp (a manifest's) overrides it
    path = tmp_path / "tile.png"
    Image.fromarray(np.full((64, 64, 3), 180, np.uint8)).save(path)
    with SlideReader.open(path, default_mpp=2.0) as slide:
        assert slide.mpp == 2.0
    with pytest.raises(SlideError, match=r"tile\.png: the default mpp .*positive number, got -1"):
        SlideReader.open(path, default_mpp=-1.0)


def test_a_document_resolution_in_a_tiff_is_no_mpp(tmp_path):
    """72 dpi (an image editor's default, as the UCSB breast images have) is no scan's mpp."""
    import tifffile

    path = tmp_path / "doc.tif"
    tifffile.imwrite(
        path, np.full((64, 80, 3), 200, np.uint8), resolution=(72, 72), resolutionunit="INCH"
    )
    with SlideReader.open(path) as slide:
        assert slide.mpp is None
    with SlideReader.open(path, default_mpp=0.5) as slide:
        assert slide.mpp == 0.5
    scan = tmp_path / "scan.tif"  # 0.5 um/px = 50,800 dpi: a scan's resolution stands
    tifffile.imwrite(
        scan, np.full((64, 80, 3), 200, np.uint8), resolution=(50800, 50800), resolutionunit="INCH"
    )
    with SlideReader.open(scan) as slide:
        assert slide.mpp == pytest.approx(0.5)


def test_the_ucsb_images_72_dpi_is_no_mpp(data_dir):
    path = sorted((data_dir / "ucsb_breast").glob("*.tif"))[0]
    with SlideReader.open(path) as slide:
        assert slide.mpp is None  # was 352.8 um/px, from its 72 dpi
    with SlideReader.open(path, default_mpp=0.5) as slide:
        assert slide.mpp == 0.5


def test_upsample_factor_and_check(image_factory):
    from gigastream.wsi.source import InputSizeError, check_upsample, upsample_factor

    slide = SlideReader.from_array(image_factory(100, 100), mpp=1.0)
    assert upsample_factor(slide, 0.25) == pytest.approx(4.0)
    assert upsample_factor(slide, 0.995) == 1.0  # within the 1% tolerance
    assert upsample_factor(slide, 2.0) == 1.0
    assert check_upsample(slide, 0.5, max_upsample=2.0) == pytest.approx(2.0)
    with pytest.raises(InputSizeError, match=r"upsampled 4x, more than data.max_upsample 2"):
        check_upsample(slide, 0.25, max_upsample=2.0, name="s (a.tif)")
