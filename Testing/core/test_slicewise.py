import numpy as np
import pytest

from MVGCore.slicewise import SliceLoop, check_axis, map_slices, put_slice, take_slice
from MVGCore.types import Cancelled, CancelToken


def test_take_and_put_slice_along_each_axis():
    volume = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert take_slice(volume, 0, 1).tolist() == volume[1].tolist()
    assert take_slice(volume, 1, 2).tolist() == volume[:, 2, :].tolist()
    assert take_slice(volume, 2, 3).tolist() == volume[:, :, 3].tolist()
    out = np.zeros_like(volume)
    put_slice(out, 1, 2, np.full((2, 4), 7))
    assert (out[:, 2, :] == 7).all() and out.sum() == 7 * 8


def test_put_slice_rejects_wrong_shape_and_bad_axis():
    out = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"shape \(3, 4\)"):
        put_slice(out, 0, 0, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="axis"):
        check_axis(3)
    with pytest.raises(ValueError, match="3D"):
        take_slice(np.zeros((3, 4)), 0, 0)


def test_loop_reports_progress_and_total_exactly_once():
    calls = []
    assert list(SliceLoop(3, lambda done, total: calls.append((done, total)))) == [0, 1, 2]
    assert calls == [(1, 3), (2, 3), (3, 3)]
    calls.clear()
    assert list(SliceLoop(0, lambda done, total: calls.append((done, total)))) == []
    assert calls == [(0, 0)]


def test_loop_batches_and_overrun():
    calls = []
    loop = SliceLoop(5, lambda done, total: calls.append(done))
    loop.advance(2)
    loop.advance(3)
    assert calls == [2, 5]
    with pytest.raises(ValueError, match="cannot advance"):
        loop.advance()


def test_cancel_stops_between_slices_without_result():
    token = CancelToken()
    seen = []

    def fn(index, plane):
        seen.append(index)
        if index == 1:
            token.cancel()
        return plane

    with pytest.raises(Cancelled):
        map_slices(fn, np.zeros((4, 2, 2)), 0, cancel=token)
    assert seen == [0, 1]


def test_map_slices_along_axis_keeps_input():
    volume = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    before = volume.copy()
    out = map_slices(lambda n, plane: plane * 0 + n, volume, axis=2, dtype=np.int16)
    assert out.dtype == np.int16 and out.shape == volume.shape
    assert (out == np.arange(4)[None, None, :]).all()
    assert (volume == before).all()
