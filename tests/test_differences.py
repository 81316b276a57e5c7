"""Pixel differences of overlapping images at the same sky positions."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import TABLE1_POS, TABLE1_SKY, scale_shift_wcs
from engine_helpers import collector as make_collector
from engine_helpers import pair_difference
from skymatch_step import ImageInput
from skymatch_step._differences import (
    DifferencesAborted,
    PairDifference,
    _PositionMap,
    clipped_median,
)
from skymatch_step._footprints import image_footprint
from skymatch_step._overlaps import PairOverlap, intersect_footprints, region_mask
from skymatch_step.simulate import make_gwcs

# Sky gradient in tangent-plane pixels, strong enough that statistics taken
# over different pixels of an overlap differ by much more than 1e-6.
GRADIENT = (0.37, -0.21)


def _scene(position, shape, offset, dtype=np.float64):
    """Linear sky gradient on the shared tangent plane, plus a constant offset."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    sky = offset + GRADIENT[0] * (xx + position[0]) + GRADIENT[1] * (yy + position[1])
    return sky.astype(dtype)


def _image(position, data, *, name="img", group=None, mask=None):
    wcs = scale_shift_wcs(*position)
    tr, inv = wcs.forward_transform, wcs.backward_transform
    return ImageInput.from_arrays(
        data, mask, lambda x, y: tr(x, y), lambda r, d: inv(r, d), id=name, group=group
    )


def _geometry(images):
    """Group indices, pairs and overlaps, as the engine finds them."""
    labels = {}
    groups = []
    for k, im in enumerate(images):
        key = ("own", k) if im.group is None else im.group
        groups.append(labels.setdefault(key, len(labels)))
    footprints = [image_footprint(im.shape, im.forward) for im in images]
    pairs, overlaps = intersect_footprints(footprints, groups, [str(im.id) for im in images])
    return groups, pairs, overlaps


def _collector(images, **options):
    groups, pairs, overlaps = _geometry(images)
    names = [str(im.id) for im in images]
    return make_collector(images, pairs, overlaps, groups, names=names, **options)


def _visit(collector, images, k):
    with images[k].pixels() as (data, mask):
        collector.visit(k, data, mask)


def _run(images, workers=1, geometry=None, **options):
    groups, pairs, overlaps = _geometry(images) if geometry is None else geometry
    names = [str(im.id) for im in images]
    collector = make_collector(images, pairs, overlaps, groups, names=names, **options)
    if workers == 1:
        for k in range(len(images)):
            _visit(collector, images, k)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda k: _visit(collector, images, k), range(len(images))))
    return collector.results(), collector


def _noisy_mosaic(seed=3, shape=(48, 64), groups=None):
    """Six noisy images on a 3 x 2 grid with fractional shifts and diffuse-like gradient."""
    rng = np.random.default_rng(seed)
    positions = [(0.0, 0.0), (40.3, 0.6), (80.7, -0.4), (0.2, 30.45), (40.55, 30.1), (80.1, 29.8)]
    images = []
    for k, pos in enumerate(positions):
        data = _scene(pos, shape, 0.5 * k, np.float32)
        data += rng.normal(0.0, 0.05, shape).astype(np.float32)
        hits = rng.choice(data.size, 20, replace=False)
        data.flat[hits] += 30.0  # cosmic rays
        images.append(_image(pos, data, name=f"n{k}", group=None if groups is None else groups[k]))
    return images


# -- exactness -------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "rtol"), [(np.float64, 1e-9), (np.float32, 1e-6)])
def test_gradient_with_masked_strip_is_exact(dtype, rtol):
    shape = (50, 60)
    pos = [(0.0, 0.0), (35.4, 7.7)]
    offsets = [12.5, 3.25]
    data = [_scene(p, shape, o, dtype) for p, o in zip(pos, offsets, strict=True)]
    # Image j (second) has an unusable strip inside the overlap, image i
    # (the sample grid) a smaller unusable patch.
    mask_j = np.ones(shape, bool)
    mask_j[:, 4:9] = False
    mask_i = np.ones(shape, bool)
    mask_i[30:35, 45:50] = False
    images = [
        _image(pos[0], data[0], name="i", mask=mask_i),
        _image(pos[1], data[1], name="j", mask=mask_j),
    ]
    (result,), _ = _run(images)
    true = offsets[0] - offsets[1]
    assert (result.a, result.b) == (0, 1)
    assert result.difference == pytest.approx(true, rel=rtol)
    # Overlap: x in [35.4, 59] of i, y in [7.7, 49]: about 23 x 41 pixels, less the
    # masked pixels and the samples whose neighbours include the strip.
    assert 600 < result.npix < 23 * 42
    assert np.isfinite(result.error)
    assert result.error > 0

    # A statistic each image takes over its own usable overlap pixels is biased by
    # the gradient over the strip: this layout does test what it claims.
    _, _pairs, overlaps = _geometry(images)
    medians = []
    for k, (im, m) in enumerate(zip(images, (mask_i, mask_j), strict=True)):
        ra_dec = overlaps[(0, 1)].first[1] if k == 0 else overlaps[(0, 1)].second[1]
        polys = [tuple(np.asarray(c, float) for c in im.inverse(r, d)) for r, d in ra_dec]
        where, sub = region_mask(polys, shape)
        medians.append(np.median(data[k][where][sub & m[where]]))
    assert abs((medians[0] - medians[1]) - true) > 0.5


def test_pair_difference_matches_collector():
    shape = (40, 50)
    pos = [(0.0, 0.0), (30.5, 10.25)]
    rng = np.random.default_rng(4)
    data = [
        _scene(p, shape, o) + rng.normal(0, 0.1, shape)
        for p, o in zip(pos, (1.0, 2.0), strict=True)
    ]
    images = [_image(p, d, name=f"p{k}") for k, (p, d) in enumerate(zip(pos, data, strict=True))]
    (expected,), _ = _run(images)
    ones = np.ones(shape, bool)
    got = pair_difference(images[0], data[0], ones, images[1], data[1], ones)
    assert got == expected
    assert got.difference == pytest.approx(-1.0, abs=5 * got.error)


def test_fortran_ordered_and_big_endian_arrays_give_same_result():
    images = _noisy_mosaic(seed=8)
    expected, _ = _run(images)
    other = []
    for im in images:
        with im.pixels() as (data, mask):
            data = np.asfortranarray(data).astype(">f4")
            mask = np.asfortranarray(mask)
        other.append(
            ImageInput.from_arrays(data, mask, im.forward, im.inverse, id=im.id, group=im.group)
        )
    got, _ = _run(other)
    assert got == expected


def test_documentation_table_noise_free():
    images = [
        _image(p, np.full((40, 40), s, np.float32), name=f"t{k}")
        for k, (s, p) in enumerate(zip(TABLE1_SKY, TABLE1_POS, strict=True))
    ]
    results, _ = _run(images)
    # Every overlapping pair of the 2 x 3 layout, including the diagonal ones.
    assert [(r.a, r.b) for r in results] == [
        (0, 1), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4), (1, 5), (2, 4), (2, 5), (3, 4), (4, 5)
    ]  # fmt: skip
    for r in results:
        assert r.difference == TABLE1_SKY[r.a] - TABLE1_SKY[r.b]
        assert r.spread == 0.0
        assert np.isfinite(r.error)
        assert r.error > 0
        # The floor: about float32 rounding of the values, per sqrt(npix).
        assert r.error == pytest.approx(1e-7 * (1 + TABLE1_SKY[r.a]) / np.sqrt(r.npix))


# -- geometry of the sampling ------------------------------------------------


@pytest.mark.parametrize("size", [128, 512, 2048])
def test_position_interpolation_on_distorted_wcs(size):
    """Interpolated positions agree with the WCSs to < 0.01 pixel."""
    shape = (size, size)
    scale = 0.031 / 3600.0
    wi = make_gwcs(shape, 53.0, -27.0, 0.0, distortion=1.5)
    # The neighbour: 85% of a width to the west (along +x), rotated by 0.4 degree.
    dra = 0.85 * size * scale / np.cos(np.deg2rad(27.0))
    wj = make_gwcs(shape, 53.0 - dra, -27.0 + 0.1 * size * scale, 0.4, distortion=1.5)
    fwd = wi.forward_transform
    inv = wj.backward_transform

    def through(x, y):
        return inv(*fwd(x, y, with_bounding_box=False), with_bounding_box=False)

    # The overlap in i: roughly the last 15% of its columns.
    c0 = int(0.8 * size)
    origin, box = (0, c0), (size, size - c0)
    pmap = _PositionMap(
        lambda x, y: fwd(x, y, with_bounding_box=False),
        lambda r, d: inv(r, d, with_bounding_box=False),
        origin,
        box,
    )
    rows = np.arange(0, box[0], max(1, size // 256))
    rr, cc = np.meshgrid(rows, np.arange(box[1]), indexing="ij")
    x, y = pmap(rr.ravel(), cc.ravel())
    ex, ey = through(cc.ravel() + c0, rr.ravel().astype(float))
    err = np.hypot(x - ex, y - ey).max()
    assert err < 0.01
    # The box does overlap j.
    assert np.mean((ex > 0) & (ex < size - 1) & (ey > 0) & (ey < size - 1)) > 0.5
    if size == 2048:
        # Large images keep the coarse grid: the WCSs are evaluated rarely.
        assert pmap.step == 32
    if size == 128:
        # The same corner distortion over a small image bends more: refined.
        assert pmap.step < 32


def test_positions_at_last_row_and_column_are_sampled():
    # j is i shifted by whole pixels: samples land exactly on j's pixel centres,
    # including its last column and row.
    shape = (20, 20)
    pos = [(0.0, 0.0), (-10.0, -10.0)]
    data = [_scene(p, shape, o) for p, o in zip(pos, (2.0, 1.0), strict=True)]
    images = [_image(p, d, name=f"e{k}") for k, (p, d) in enumerate(zip(pos, data, strict=True))]
    (r,), _ = _run(images)
    assert r.difference == pytest.approx(1.0, rel=1e-12)
    # i's pixels 0..9 map to j's 10..19: all 10 x 10 are sampled.
    assert r.npix == 100


# -- groups, signs, threads --------------------------------------------------


def test_groups_are_pooled_with_the_sign_of_the_group_pair():
    shape = (40, 40)
    # Group "A" has images 0 and 2, group "B" images 1 and 3: in pairs (1, 2) and
    # (2, 3)... the higher-index image is in the lower group.
    pos = [(0.0, 0.0), (30.3, 0.2), (0.4, 30.6), (30.8, 30.1)]
    labels = ["A", "B", "A", "B"]
    offsets = {"A": 4.0, "B": 1.5}
    data = [_scene(p, shape, offsets[g]) for p, g in zip(pos, labels, strict=True)]
    images = [
        _image(p, d, name=f"g{k}", group=g)
        for k, (p, d, g) in enumerate(zip(pos, data, labels, strict=True))
    ]
    groups, pairs, _ = _geometry(images)
    assert groups == [0, 1, 0, 1]
    assert any(groups[i] > groups[j] for i, j in pairs)
    (r,), _ = _run(images)
    assert (r.a, r.b) == (0, 1)
    assert r.difference == pytest.approx(offsets["A"] - offsets["B"], rel=1e-9)
    # Pooled: as many differences as the member pairs measured one by one.
    total = 0
    for i, j in pairs:
        (single,), _ = _run([_image(pos[i], data[i]), _image(pos[j], data[j])])
        sign = 1 if groups[i] < groups[j] else -1
        assert sign * single.difference == pytest.approx(r.difference, rel=1e-9)
        total += single.npix
    assert len(pairs) == 4
    assert r.npix == total


def test_threads_give_bit_identical_results():
    images = _noisy_mosaic(groups=["a", "b", "a", "c", "b", "c"])
    geometry = _geometry(images)
    serial, _ = _run(images, geometry=geometry)
    assert len(serial) == 3
    for _ in range(3):
        parallel, _ = _run(images, workers=2, geometry=geometry)
        assert parallel == serial


def test_noisy_mosaic_recovers_offsets():
    images = _noisy_mosaic()
    results, _ = _run(images)
    for r in results:
        true = 0.5 * r.a - 0.5 * r.b
        # Cosmic rays do not bias the clipped median; the error is realistic.
        assert abs(r.difference - true) < 5 * r.error
        # Noise 0.05 in i, less in the interpolated j.
        assert 0.05 < r.spread < 0.075
        assert r.error < 0.01


# -- failure handling, memory, omissions --------------------------------------


def test_abort_wakes_a_waiting_visit():
    images = _noisy_mosaic()[:2]
    collector = _collector(images)
    raised = []

    def second():
        try:
            _visit(collector, images, 1)
        except DifferencesAborted as err:
            raised.append(err)

    t = threading.Thread(target=second)
    t.start()
    t.join(0.2)
    assert t.is_alive()  # waiting for image 0
    collector.abort()
    t.join(10)
    assert not t.is_alive()
    assert len(raised) == 1
    assert "n0 was not visited" in str(raised[0])
    with pytest.raises(RuntimeError, match="1 image\\(s\\) not visited \\(n0\\)"):
        collector.results()


def test_failed_visit_releases_its_partners():
    images = _noisy_mosaic()[:2]
    collector = _collector(images)
    with pytest.raises(ValueError, match="must equal the declared shape"):
        collector.visit(0, np.zeros((3, 3)), np.ones((3, 3), bool))
    _visit(collector, images, 1)  # does not wait forever
    assert collector.results() == []


def test_results_after_a_failed_comparison_are_an_error():
    images = _noisy_mosaic()[:2]
    collector = _collector(images)
    _visit(collector, images, 0)
    with pytest.raises(ValueError, match="n1: data shape \\(3, 3\\)"):
        collector.visit(1, np.zeros((3, 3)), np.ones((3, 3), bool))
    with pytest.raises(RuntimeError, match="a visit failed before comparing all its pairs"):
        collector.results()


def test_visit_twice_and_bad_pairs_are_errors():
    images = _noisy_mosaic()[:2]
    collector = _collector(images)
    _visit(collector, images, 0)
    with pytest.raises(ValueError, match="n0 \\(index 0\\) was already visited"):
        _visit(collector, images, 0)
    groups, pairs, overlaps = _geometry(images)
    with pytest.raises(ValueError, match="both in group 0"):
        make_collector(images, pairs, overlaps, [0, 0])
    with pytest.raises(ValueError, match="is not \\(i, j\\)"):
        make_collector(images, [(1, 0)], overlaps, groups)
    with pytest.raises(ValueError, match="nclip must be a non-negative integer"):
        make_collector(images, pairs, overlaps, groups, nclip=-1)


def test_pending_samples_are_freed_when_used():
    images = _noisy_mosaic()[:2]
    collector = _collector(images)
    _visit(collector, images, 0)
    pending = collector.pending_bytes
    assert pending > 0
    _visit(collector, images, 1)
    (r,) = collector.results()
    assert collector.pending_bytes == 0
    assert collector.pooled_bytes == 0
    # float32 value + uint16 column per sample (plus a count per row); then the
    # float32 differences of the pair while it is reduced.
    assert pending < 7 * r.npix + 4 * 48
    assert collector.peak_bytes <= pending + 4 * r.npix + 4 * 48


@pytest.mark.parametrize("unusable", ["first", "second"])
def test_overlap_without_usable_pixels_is_omitted(unusable):
    shape = (30, 30)
    pos = [(0.0, 0.0), (20.0, 0.0), (40.0, 0.0)]
    masks = [np.ones(shape, bool) for _ in pos]
    # Image 1's overlap with image 0 (its first 10 columns, plus the
    # neighbours bilinear sampling needs) is unusable, in one image or the other.
    if unusable == "first":
        masks[0][:, 19:] = False
    else:
        masks[1][:, :11] = False
    images = [
        _image(p, _scene(p, shape, float(k)), name=f"u{k}", mask=m)
        for k, (p, m) in enumerate(zip(pos, masks, strict=True))
    ]
    results, _ = _run(images)
    assert [(r.a, r.b) for r in results] == [(1, 2)]
    assert results[0].difference == pytest.approx(-1.0, rel=1e-9)


def test_pair_with_zero_overlap_area_is_omitted():
    shape = (10, 10)
    images = [_image((0.0, 0.0), np.ones(shape)), _image((50.0, 0.0), np.ones(shape))]
    empty = PairOverlap((0.0, []), (0.0, []))
    collector = make_collector(images, [(0, 1)], {(0, 1): empty}, [0, 1])
    for k in range(2):
        _visit(collector, images, k)
    assert collector.results() == []


def test_value_limits_act_like_masks():
    shape = (30, 40)
    pos = [(0.0, 0.0), (25.5, 3.5)]
    data = [_scene(p, shape, o) for p, o in zip(pos, (3.0, 1.0), strict=True)]
    data[1][10:14, 2:6] = 1e6  # in the overlap of j
    data[0][20:22, 30:33] = -1e6  # in the overlap of i
    images = [_image(p, d, name=f"v{k}") for k, (p, d) in enumerate(zip(pos, data, strict=True))]
    (limited,), _ = _run(images, lower=-1e3, upper=1e3)
    masked = [
        _image(p, d, name=f"v{k}", mask=np.abs(d) < 1e3)
        for k, (p, d) in enumerate(zip(pos, data, strict=True))
    ]
    (expected,), _ = _run(masked)
    assert limited == expected
    assert limited.difference == pytest.approx(2.0, rel=1e-9)
    (unlimited,), _ = _run(images)
    assert unlimited.npix > limited.npix


# -- statistics ----------------------------------------------------------------


def test_clipped_median_small_sets_and_outliers():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, 1001)
    med, spread, n = clipped_median(x, nclip=0)
    assert med == np.median(x)
    assert n == 1001
    assert spread == pytest.approx(1.482602218505602 * np.median(np.abs(x - med)))
    y = np.r_[x, np.full(100, 50.0)]
    med, spread, n = clipped_median(y)
    assert n == 1001  # the outliers, and nothing else, clipped
    assert med == np.median(x)
    med, spread, n = clipped_median(np.zeros(0))
    assert np.isnan(med)
    assert np.isnan(spread)
    assert n == 0
    assert clipped_median(np.array([2.0, 2.0, 7.0])) == (2.0, 0.0, 3)


def test_clipped_median_subsampled_limits_exact_final_statistics():
    rng = np.random.default_rng(2)
    # Gaussian values within 3 sigma, and far outliers: whatever the exact
    # clipping limits (about 1 +- 4 * 0.5), they keep the first and only them.
    core = rng.normal(1.0, 0.5, 400_000)
    core = core[np.abs(core - 1.0) < 1.5][:200_001].astype(np.float32)
    x = np.r_[core, rng.uniform(10, 100, 3000).astype(np.float32)]
    rng.shuffle(x)
    med, spread, n = clipped_median(x, subsample=4096)
    # The limits came from a subset; the statistics are those of all values
    # inside them: the middle value of the core and its MAD.
    assert n == core.size
    ordered = np.sort(core)
    assert med == float(ordered[core.size // 2])
    dev = np.sort(np.abs(core - np.float32(med)))
    assert spread == 1.482602218505602 * float(dev[core.size // 2])
    assert clipped_median(x, subsample=0) == (med, spread, n)


@pytest.mark.parametrize(
    ("shift", "noise_j", "inflation"),
    [
        ((20.0, 0.0), 1.0, 1.0),
        # Half-pixel offsets: the mean's variance is inflated by
        # (1 + r) / (1 + r * q), q = (fx**2 + (1-fx)**2) * (fy**2 + (1-fy)**2),
        # r = noise_j**2 / noise_i**2.
        ((20.5, 0.3), 1.0, 2 / (1 + 0.5 * 0.58)),
        ((20.5, 0.3), 0.5, 1.25 / (1 + 0.25 * 0.5 * 0.58)),
    ],
)
def test_error_matches_scatter_of_repeated_measurements(shift, noise_j, inflation):
    """The error is the scatter of the difference over noise realisations."""
    shape = (40, 60)
    rng = np.random.default_rng(11)
    # Plain callables (pixel coordinates of a common plane as "sky"): fast.
    im = [
        ImageInput(
            id=f"r{k}",
            shape=shape,
            forward=lambda x, y, s=s: (np.asarray(x) + s[0], np.asarray(y) + s[1]),
            inverse=lambda a, b, s=s: (np.asarray(a) - s[0], np.asarray(b) - s[1]),
            pixels=None,
        )
        for k, s in enumerate([(0.0, 0.0), shift])
    ]
    box = (np.array([20.0, 59.0, 59.0, 20.0, 20.0]), np.array([0.0, 0.0, 39.0, 39.0, 0.0]))
    overlap = PairOverlap((1.0, [box]), (1.0, [box]))
    ones = np.ones(shape, bool)
    diffs, errors, factors = [], [], []
    for _ in range(300):
        a = rng.normal(0.0, 1.0, shape)
        b = rng.normal(0.0, noise_j, shape)
        r = pair_difference(im[0], a, ones, im[1], b, ones, overlap)
        assert isinstance(r, PairDifference)
        diffs.append(r.difference)
        errors.append(r.error)
        factors.append(r.error * np.sqrt(r.npix) / r.spread)
    # 300 realisations: the scatter is known to about 4%.
    assert np.std(diffs) / np.mean(errors) == pytest.approx(1.0, abs=0.12)
    # The correction applied: the mean's inflation (the estimate is the mean
    # of the differences near their median, whose standard deviation is
    # close to the MAD-based spread for Gaussian noise). Without it the error
    # would be too small for sub-pixel offsets.
    assert np.mean(factors) == pytest.approx(np.sqrt(inflation), rel=0.03)
