"""Colorization's chroma merge: byte for byte the official OpenCV recipe, without OpenCV.

The official colorization output (test_pasd.py) is
    color_np = cv2.resize(result_bgr, gray.size)                      # INTER_LINEAR
    hires = BGR2YUV(gray); hires[..., 1:] = BGR2YUV(color_np)[..., 1:]
    out = YUV2BGR(hires)                                              # written with cv2.imwrite
The reference arrays below were made with opencv-python-headless 5.1.0 (identical with 4.8.1) by running
that recipe (and plain cv2.resize / cv2.cvtColor) on the `_pattern` / `_gray` inputs defined here, so the
tests assert exactness without OpenCV. With OpenCV importable, random cases are also compared live.
"""

from __future__ import annotations

import numpy as np
import pytest

from pasd_core.engine.colorize import bgr_to_yuv, merge_chroma, resize_linear, yuv_to_bgr


def _pattern(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic colour image with varied channels (no RNG, so the references never drift)."""
    i, j, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    return ((i * 37 + j * 101 + c * 53 + seed * 29 + i * j * 7) % 256).astype(np.uint8)


def _gray(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic gray image as RGB (R = G = B), as the colorization input reaches the merge."""
    i, j = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.repeat(((i * 61 + j * 23 + seed * 17) % 256).astype(np.uint8)[..., None], 3, axis=-1)


# (result H, W), (gray H, W), seed, official output as RGB: non-integer downscale, upscale,
# exact 2x downscale (OpenCV's INTER_AREA shortcut) and 1-pixel-wide sizes
# fmt: off
MERGE_REFERENCES = [
    ((5, 7), (4, 3), 1, [
        [[0, 29, 62], [0, 50, 103], [21, 74, 116]],
        [[91, 81, 27], [69, 122, 79], [94, 147, 81]],
        [[141, 129, 184], [242, 135, 93], [223, 171, 159]],
        [[165, 219, 196], [202, 223, 255], [225, 255, 236]],
    ]),
    ((3, 2), (5, 6), 2, [
        [[0, 44, 97], [14, 67, 120], [47, 99, 68], [79, 132, 16], [112, 165, 0], [135, 188, 0]],
        [[52, 105, 158], [75, 128, 181], [127, 147, 147], [180, 165, 115], [233, 184, 83], [255, 207, 106]],
        [[113, 166, 219], [136, 189, 242], [218, 187, 239], [255, 183, 237], [255, 182, 234], [151, 0, 1]],
        [[174, 227, 255], [197, 250, 255], [23, 0, 44], [108, 0, 42], [189, 0, 39], [212, 10, 62]],
        [[0, 32, 85], [2, 55, 108], [84, 53, 105], [169, 49, 103], [250, 48, 100], [255, 71, 123]],
    ]),
    ((8, 6), (4, 3), 3, [
        [[60, 49, 39], [38, 91, 80], [106, 95, 85]],
        [[83, 136, 61], [144, 133, 123], [167, 156, 146]],
        [[182, 171, 161], [205, 194, 184], [228, 217, 207]],
        [[243, 232, 222], [3, 0, 46], [0, 41, 30]],
    ]),
    ((1, 4), (3, 1), 4, [
        [[115, 39, 92]],
        [[176, 100, 153]],
        [[237, 161, 214]],
    ]),
]
RESIZE_REFERENCES = [
    ((12, 16), (9, 10), 5, [
        [
            [169, 158, 181], [111, 142, 195], [125, 156, 103], [156, 149, 202], [131, 120, 144], [124, 177, 81],
            [139, 153, 206], [153, 99, 131], [145, 198, 55], [87, 140, 180],
        ],
        [
            [157, 120, 84], [156, 209, 147], [143, 132, 121], [116, 54, 107], [90, 143, 106], [102, 116, 169],
            [165, 90, 143], [139, 128, 117], [112, 165, 90], [86, 139, 64],
        ],
        [
            [60, 83, 136], [223, 84, 99], [161, 107, 139], [98, 130, 183], [112, 101, 154], [165, 55, 109],
            [170, 219, 80], [125, 156, 103], [79, 132, 125], [85, 138, 97],
        ],
        [
            [82, 122, 111], [60, 109, 140], [115, 146, 93], [169, 184, 45], [117, 170, 74], [86, 140, 129],
            [73, 126, 119], [111, 164, 89], [148, 201, 58], [135, 188, 78],
        ],
        [
            [134, 111, 164], [127, 154, 207], [133, 122, 111], [151, 89, 129], [80, 133, 147], [150, 113, 166],
            [78, 131, 69], [97, 150, 139], [115, 168, 93], [133, 97, 111],
        ],
        [
            [122, 163, 215], [173, 221, 82], [151, 97, 129], [112, 164, 213], [128, 181, 71], [127, 86, 139],
            [105, 137, 189], [83, 136, 82], [82, 135, 128], [132, 155, 144],
        ],
        [
            [162, 185, 88], [197, 58, 111], [105, 158, 189], [166, 219, 75], [48, 100, 141], [147, 170, 61],
            [182, 44, 92], [90, 122, 175], [151, 200, 61], [182, 73, 126],
        ],
        [
            [124, 88, 102], [72, 125, 165], [123, 176, 101], [58, 111, 151], [121, 174, 99], [146, 109, 124],
            [119, 172, 98], [119, 108, 161], [118, 158, 96], [91, 106, 159],
        ],
        [
            [87, 76, 116], [139, 171, 220], [141, 87, 119], [142, 195, 56], [45, 98, 121], [145, 198, 101],
            [56, 109, 124], [147, 94, 147], [85, 116, 131], [150, 139, 42],
        ],
    ]),
    ((2, 3), (7, 4), 6, [
        [[174, 227, 24], [77, 130, 87], [57, 110, 163], [120, 173, 226]],
        [[174, 227, 24], [77, 130, 87], [57, 110, 163], [120, 173, 226]],
        [[182, 180, 32], [86, 118, 96], [67, 120, 152], [131, 184, 182]],
        [[193, 118, 43], [98, 103, 108], [80, 133, 138], [146, 199, 124]],
        [[203, 55, 53], [110, 87, 119], [93, 146, 124], [160, 213, 65]],
        [[211, 8, 61], [118, 75, 128], [103, 156, 113], [171, 224, 21]],
        [[211, 8, 61], [118, 75, 128], [103, 156, 113], [171, 224, 21]],
    ]),
]
COLOURS = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [12, 200, 77], [250, 3, 128],
           [90, 91, 92]]
BGR2YUV_OF_COLOURS = [[0, 128, 128], [255, 128, 128], [29, 239, 103], [150, 54, 0], [76, 91, 255], [142, 64, 71],
                      [69, 217, 180], [91, 128, 129]]
# the same triples read as Y, U, V
YUV2BGR_OF_COLOURS = [[0, 125, 0], [255, 131, 255], [0, 255, 109], [255, 24, 0], [0, 0, 145], [158, 13, 0],
                      [0, 255, 250], [15, 126, 49]]
# fmt: on


@pytest.mark.parametrize("result_size, gray_size, seed, expected", MERGE_REFERENCES)
def test_merge_matches_official_reference(result_size, gray_size, seed, expected):
    out = merge_chroma(_pattern(*result_size, seed), _gray(*gray_size, seed))
    assert out.dtype == np.uint8 and out.shape == (*gray_size, 3)
    np.testing.assert_array_equal(out, np.array(expected, dtype=np.uint8))


@pytest.mark.parametrize("src_size, dst_size, seed, expected", RESIZE_REFERENCES)
def test_resize_matches_opencv_reference(src_size, dst_size, seed, expected):
    out = resize_linear(_pattern(*src_size, seed), dst_size[1], dst_size[0])
    np.testing.assert_array_equal(out, np.array(expected, dtype=np.uint8))


def test_yuv_conversions_match_opencv_reference():
    colours = np.array([COLOURS], dtype=np.uint8)
    np.testing.assert_array_equal(bgr_to_yuv(colours), np.array([BGR2YUV_OF_COLOURS], dtype=np.uint8))
    np.testing.assert_array_equal(yuv_to_bgr(colours), np.array([YUV2BGR_OF_COLOURS], dtype=np.uint8))


def test_gray_result_keeps_the_gray_input():
    # a colourless result has U = V = 128, and YUV2BGR(Y, 128, 128) is Y: nothing is tinted
    gray = _gray(9, 13, 3)
    result = np.repeat(_pattern(20, 24, 1)[..., :1], 3, axis=-1)
    np.testing.assert_array_equal(merge_chroma(result, gray), gray)


def test_output_has_gray_size_and_is_a_new_array():
    result, gray = _pattern(16, 16, 2), _gray(16, 16, 2)
    out = merge_chroma(result, gray)
    assert out.shape == gray.shape and out.flags.c_contiguous
    assert not np.shares_memory(out, result) and not np.shares_memory(out, gray)


@pytest.mark.parametrize(
    "result, gray, message",
    [
        ([[[0, 0, 0]]], _gray(2, 2, 0), "result_rgb must be a numpy array"),
        (_pattern(4, 4, 0).astype(np.float32), _gray(2, 2, 0), "result_rgb must be uint8"),
        (_pattern(4, 4, 0), _gray(2, 2, 0)[..., 0], r"gray_rgb must be H x W x 3 \(RGB\), got shape \(2, 2\)"),
        (np.zeros((4, 4, 4), np.uint8), _gray(2, 2, 0), r"result_rgb must be H x W x 3"),
        (_pattern(4, 4, 0), np.zeros((0, 3, 3), np.uint8), "gray_rgb must not be empty"),
    ],
)
def test_bad_inputs_are_rejected_with_a_clear_message(result, gray, message):
    with pytest.raises(ValueError, match=message):
        merge_chroma(result, gray)


# ---- live comparison with OpenCV, when it is importable (it is not a project dependency) ----


@pytest.fixture(scope="module")
def cv2():
    cv2 = pytest.importorskip(
        "cv2", reason="OpenCV not installed: pip install opencv-python-headless (or put it on PYTHONPATH) to compare"
    )
    cv2.setNumThreads(1)
    return cv2


def _official(cv2, result_rgb: np.ndarray, gray_rgb: np.ndarray) -> np.ndarray:
    """The official test_pasd.py colorization lines, returning the RGB that cv2.imwrite stores."""
    color_np = cv2.resize(np.ascontiguousarray(result_rgb[:, :, ::-1]), (gray_rgb.shape[1], gray_rgb.shape[0]))
    color_yuv = cv2.cvtColor(color_np, cv2.COLOR_BGR2YUV)
    orig_yuv = cv2.cvtColor(gray_rgb, cv2.COLOR_BGR2YUV)
    hires = np.copy(orig_yuv)
    hires[:, :, 1:3] = color_yuv[:, :, 1:3]
    return cv2.cvtColor(hires, cv2.COLOR_YUV2BGR)[..., ::-1]


# fmt: off
_SIZE_PAIRS = [
    ((64, 64), (48, 64)), ((72, 96), (48, 64)), ((128, 128), (64, 64)), ((40, 40), (64, 64)),
    ((64, 40), (64, 40)), ((1, 9), (4, 4)), ((9, 1), (1, 9)), ((1, 1), (7, 5)), ((7, 5), (1, 1)),
    ((2, 4), (1, 2)), ((96, 96), (32, 32)), ((512, 384), (255, 191)), ((3, 3), (200, 2)),
]
# fmt: on


def test_matches_opencv_on_random_cases(cv2):
    rng = np.random.default_rng(0)
    pairs = list(_SIZE_PAIRS)
    while len(pairs) < 400:
        src = (int(rng.integers(1, 160)), int(rng.integers(1, 160)))
        if rng.integers(3):
            dst = (int(rng.integers(1, 160)), int(rng.integers(1, 160)))
        else:  # integer ratios, up or down
            k = int(rng.integers(2, 5))
            dst = (src[0] * k, src[1] * k) if rng.integers(2) else (max(1, src[0] // k), max(1, src[1] // k))
        pairs.append((src, dst))
    for index, (src, dst) in enumerate(pairs):
        result = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
        # mostly true gray inputs; every fifth a colour one, to pin the official channel order too
        gray = rng.integers(0, 256, (*dst, 3), dtype=np.uint8)
        if index % 5:
            gray[..., 1] = gray[..., 2] = gray[..., 0]
        expected_resize = cv2.resize(result, (dst[1], dst[0]))
        np.testing.assert_array_equal(resize_linear(result, dst[1], dst[0]), expected_resize, err_msg=f"{src}->{dst}")
        np.testing.assert_array_equal(merge_chroma(result, gray), _official(cv2, result, gray), err_msg=f"{src}->{dst}")


def test_yuv_matches_opencv_on_every_colour(cv2):
    every = np.arange(1 << 24, dtype=np.uint32)
    for block in np.array_split(every, 16):  # 1M colours at a time keeps memory modest
        image = np.stack([(block >> 16) & 255, (block >> 8) & 255, block & 255], axis=-1).astype(np.uint8)
        image = image.reshape(1024, -1, 3)
        np.testing.assert_array_equal(bgr_to_yuv(image), cv2.cvtColor(image, cv2.COLOR_BGR2YUV))
        np.testing.assert_array_equal(yuv_to_bgr(image), cv2.cvtColor(image, cv2.COLOR_YUV2BGR))
