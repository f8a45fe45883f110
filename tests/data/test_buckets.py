"""Bucket sizes, the nearest-bucket rule, merging small buckets and the batch order, without a model."""

from __future__ import annotations

from collections import Counter

import pytest

from sdlite.data.buckets import BatchOrder, bucket_sizes, make_layout, nearest


def test_sd_buckets_at_512_are_kohyas_within_aspect_two() -> None:
    sizes = bucket_sizes(512, 64, 256, 1024, 2.0)
    assert sizes == [(384, 640), (448, 576), (512, 512), (576, 448), (640, 384)]
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in sizes)
    assert bucket_sizes(512, 64, 256, 1024, 4.0)[0] == (256, 1024)


def test_nearest_bucket_follows_the_aspect_ratio() -> None:
    sizes = bucket_sizes(512, 64, 256, 1024, 2.0)
    assert nearest((3000, 2000), sizes) == (640, 384)
    assert nearest((2000, 3000), sizes) == (384, 640)
    assert nearest((1000, 1010), sizes) == (512, 512)
    assert nearest((1200, 1000), sizes) == (576, 448)


def test_layout_is_off_for_square_data_and_on_for_mixed() -> None:
    square = make_layout([(64, 64)] * 6, 64, 2, None, 16, None, None, 2.0)
    assert not square.bucketed and square.note.startswith("off: every image is (nearly) square")
    mixed = make_layout([(96, 64)] * 4 + [(64, 64)] * 2, 64, 2, None, 16, None, None, 2.0)
    assert mixed.bucketed and mixed.histogram() == {"80x48": 4, "64x64": 2}
    forced_off = make_layout([(96, 64)] * 4, 64, 2, False, 16, None, None, 2.0)
    assert set(forced_off.sizes) == {(64, 64)} and forced_off.note == "off: --no-buckets"
    only_square_fits = make_layout([(96, 64)] * 4, 64, 2, None, 64, None, None, 2.0)
    assert not only_square_fits.bucketed and "only 64x64 fits --bucket-step 64" in only_square_fits.note


def test_buckets_smaller_than_a_global_batch_are_merged_so_no_image_is_lost() -> None:
    sizes = [(96, 64)] * 3 + [(64, 96)] * 1 + [(64, 64)] * 4
    layout = make_layout(sizes, 64, 4, None, 16, None, None, 2.0)
    assert sum(layout.histogram().values()) == 8
    assert all(count >= 4 for count in layout.histogram().values())
    assert "moved to a neighbouring bucket" in layout.note
    assert layout.order.batches_per_epoch == 2


@pytest.mark.parametrize("seed", [0, 7])
def test_batch_order_uses_every_image_once_per_epoch_one_bucket_per_batch(seed: int) -> None:
    groups = ((0, 1, 2, 3, 4), (5, 6, 7, 8))
    order = BatchOrder(groups, 2)
    assert order.batches_per_epoch == 4  # 2 + 2: a bucket's odd image waits for another epoch
    for epoch in range(3):
        batches = [order.batch(epoch * 4 + k, seed) for k in range(4)]
        seen = Counter(i for b in batches for i in b)
        assert all(n == 1 for n in seen.values()) and len(seen) == 8
        assert all(set(b) <= set(groups[0]) or set(b) <= set(groups[1]) for b in batches)
    assert [order.batch(k, seed) for k in range(8)] == [BatchOrder(groups, 2).batch(k, seed) for k in range(8)]
    assert [order.batch(k, seed) for k in range(4)] != [order.batch(k, seed + 1) for k in range(4)]


def test_side_limits_and_aspect_limit_bound_the_buckets() -> None:
    wide = bucket_sizes(512, 64, 256, 1024, 4.0)
    assert max(max(w / h, h / w) for w, h in wide) == 4.0
    assert all(min(w, h) >= 384 and max(w, h) <= 640 for w, h in bucket_sizes(512, 64, 384, 640, 4.0))
    layout = make_layout([(300, 100)] * 4, 512, 2, None, 64, None, None, 4.0)
    assert layout.histogram() == {"768x320": 4}  # ratio 2.4 is nearest 3; with max aspect 2 it is 640x384
    layout = make_layout([(300, 100)] * 4, 512, 2, None, 64, None, None, 2.0)
    assert layout.histogram() == {"640x384": 4}


def test_each_image_may_have_its_own_resolution_and_bucket_sides() -> None:
    """[[datasets]] with their own resolution / bucket sides: buckets made for each, batches of one size."""
    wide = [(128, 64)] * 4
    layout = make_layout(wide * 2, 64, 2, True, 16, None, None, 4.0,
                         [(64, None, None)] * 4 + [(64, None, 64)] * 2 + [(32, None, None)] * 2)  # fmt: skip
    first, capped, small = layout.sizes[0], layout.sizes[4], layout.sizes[6]
    assert first[0] > 64 and max(capped) <= 64 and first != capped
    assert small[0] * small[1] <= 32 * 32 < first[0] * first[1]
    for step in range(4):
        assert len({layout.sizes[i] for i in layout.order.batch(step, 0)}) == 1
    off = make_layout(wide * 2, 64, 2, False, 16, None, None, 4.0, [(64, None, None)] * 4 + [(32, None, None)] * 4)
    assert set(off.sizes) == {(64, 64), (32, 32)} and not off.bucketed
