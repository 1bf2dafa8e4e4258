import dataclasses

import numpy as np
import pytest
import torch

from umt.loaders.errors import UserError
from umt.loaders.loading.audio import CPU_CHUNK, EPS, HOP, N_FFT, log_mel, mel_filterbank
from umt.loaders.stored.views import (CENTRE, Geometry, ViewPolicy, ViewSpec, make_view, make_views,
                                      eval_view, eval_views)

SPEC = ViewSpec(frames=4, stride=2, crop=16, audio_seconds=0.5)
CUT = dataclasses.replace(SPEC, crop_mode="cut")
GEOM = Geometry(frames=12, height=24, width=20, audio_samples=16000, sample_rate=16000)


def test_view_is_a_pure_function_of_seed_row_view():
    assert make_view(3, 10, 1, SPEC, GEOM) == make_view(3, 10, 1, SPEC, GEOM)
    views = {make_view(3, 10, v, SPEC, GEOM) for v in range(8)}
    assert len(views) > 4  # different view indices give different crops
    assert views != {make_view(4, 10, v, SPEC, GEOM) for v in range(8)}  # and so do other seeds
    for v in range(50):
        view = make_view(0, v, v, SPEC, GEOM)
        assert 0 <= view.t0 <= 12 - 7 and 0 <= view.audio_offset <= 8000
        assert 0 <= view.y0 <= 24 - view.h and 0 <= view.x0 <= 20 - view.w and view.h >= 1 and view.w >= 1
        cut = make_view(0, v, v, CUT, GEOM)
        assert (cut.h, cut.w) == (16, 16) and 0 <= cut.y0 <= 8 and 0 <= cut.x0 <= 4


def test_centre_view_and_train_view_index():
    assert make_view(0, 5, CENTRE, CUT, GEOM).as_tuple() == (2, 4, 2, 16, 16, 0, 4000)
    assert make_view(0, 5, CENTRE, SPEC, GEOM).as_tuple() == (2, 2, 0, 20, 20, 0, 4000)  # the short side's square
    assert {ViewPolicy(0, e, True, 3).index(7) for e in range(40)} == {0, 1, 2}
    assert ViewPolicy(0, 5, True).index(7) == 5 and ViewPolicy(0, 5).index(7) == CENTRE
    assert ViewPolicy(0, 5, True, 3, view=2).index(7) == 2


def test_vector_views_equal_the_scalar_ones():
    rows, views = np.arange(500), np.tile([CENTRE, 0, 1, 2, 7, eval_view(1, 2, 2, 3)], 100)[:500]
    for spec in (SPEC, CUT):
        many = make_views(3, rows, views, spec, GEOM)
        assert many.tolist() == [list(make_view(3, r, v, spec, GEOM).as_tuple()) for r, v in zip(rows, views)]


def test_view_draws_are_uniform():
    """Each offset takes every value of its range about equally often; the flip is a fair coin."""
    params = make_views(1, np.arange(20000), np.zeros(20000, np.int64), CUT, GEOM)
    for column, values in ((0, 6), (1, 9), (2, 5), (5, 2)):
        counts = np.bincount(params[:, column], minlength=values)
        assert len(counts) == values and counts.min() > 0.9 * 20000 / values and counts.max() < 1.1 * 20000 / values


def test_resized_crop_box_follows_its_area_and_aspect():
    """A fixed area share and aspect give one box size (round(sqrt(0.25 * 24 * 20)) = 11); the default
    ranges give boxes of many sizes and shapes, and the fallback square only when no try fits."""
    rows = np.arange(2000)
    fixed = dataclasses.replace(SPEC, min_area=0.25, max_area=0.25, min_aspect=1.0, max_aspect=1.0)
    params = make_views(1, rows, np.zeros(2000, np.int64), fixed, GEOM)
    assert set(map(tuple, params[:, 3:5].tolist())) == {(11, 11)}
    assert set(params[:, 1].tolist()) == set(range(24 - 11 + 1)) and set(params[:, 2].tolist()) == set(range(20 - 11 + 1))
    wide = dataclasses.replace(SPEC, min_aspect=2.0, max_aspect=2.0, min_area=1.0)   # never fits: 10 tries, then
    assert {tuple(p) for p in make_views(1, rows[:50], np.zeros(50, np.int64), wide, GEOM)[:, 1:5].tolist()} == {(2, 0, 20, 20)}
    sizes = make_views(1, rows, np.zeros(2000, np.int64), SPEC, GEOM)[:, 3:5]
    assert len(set(map(tuple, sizes.tolist()))) > 100 and (sizes[:, 0] != sizes[:, 1]).mean() > 0.5


def test_short_side_jitter_box_is_the_short_side_over_the_drawn_scale():
    """jitter: the short side scaled by s x crop, then a crop: a square box of short / s (20 / 2 = 10
    here), anywhere; PySlowFast's 256-320 for 224 gives boxes from 20 x 7/10 to 20 x 7/8 pixels."""
    rows, zeros = np.arange(2000), np.zeros(2000, np.int64)
    fixed = dataclasses.replace(SPEC, crop_mode="jitter", min_short=2.0, max_short=2.0)
    params = make_views(1, rows, zeros, fixed, GEOM)
    assert set(map(tuple, params[:, 3:5].tolist())) == {(10, 10)}
    assert set(params[:, 1].tolist()) == set(range(15)) and set(params[:, 2].tolist()) == set(range(11))
    sides = make_views(1, rows, zeros, dataclasses.replace(SPEC, crop_mode="jitter"), GEOM)[:, 3:5]
    assert (sides[:, 0] == sides[:, 1]).all() and set(sides[:, 0].tolist()) == {14, 15, 16, 17}   # 17.5 rounds up only at 8/7 itself
    assert make_view(0, 5, CENTRE, fixed, GEOM) == make_view(0, 5, CENTRE, SPEC, GEOM)


def test_eval_views_space_clips_and_crops():
    """3 clips x 3 crops: windows at the start, middle and end; crops along the long side (here the
    height), centred across; no flip. A landscape frame puts them along the width."""
    views = [make_view(0, 5, v, SPEC, GEOM) for v in eval_views(3, 3)]
    assert [(v.t0, v.audio_offset) for v in views] == [(0, 0)] * 3 + [(2, 4000)] * 3 + [(5, 8000)] * 3
    assert [v.box for v in views[:3]] == [(0, 0, 20, 20), (2, 0, 20, 20), (4, 0, 20, 20)]
    assert not any(v.flip for v in views) and eval_view(0, 1, 0, 1) == CENTRE
    landscape = dataclasses.replace(GEOM, height=16, width=40)
    assert [make_view(0, 5, v, CUT, landscape).box for v in eval_views(1, 3)] == [(0, 0, 16, 16), (0, 12, 16, 16), (0, 24, 16, 16)]
    assert make_view(0, 5, eval_views(1, 3)[1], SPEC, landscape) == make_view(0, 5, CENTRE, SPEC, landscape)
    assert len(set(eval_views(10, 3))) == 30
    with pytest.raises(UserError, match="test views"):
        eval_view(3, 3, 0, 1)
    with pytest.raises(ValueError, match="no training view"):
        make_view(0, 5, -1 - 8, SPEC, GEOM)   # crop 1 of 1


def test_log_mel_peaks_at_the_tone():
    t = torch.arange(16000) / 16000
    low, high = (log_mel(torch.sin(2 * torch.pi * f * t), 16000, 40).mean(-1).argmax().item() for f in (300.0, 4000.0))
    assert low < high
    assert log_mel(torch.zeros(16000), 16000, 40).shape == (40, 101)


@pytest.mark.parametrize("shape", [((CPU_CHUNK - 1) * HOP,), (CPU_CHUNK * HOP + 7,), (3, (2 * CPU_CHUNK + 74) * HOP + 90)])
def test_log_mel_in_chunks_equals_one_stft_pass(shape):
    # the CPU log-mel runs CPU_CHUNK frames a pass: the frames at and across chunk edges must equal one centred pass
    wave = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.1
    spec = torch.stft(wave, N_FFT, HOP, window=torch.hann_window(N_FFT), center=True, return_complex=True)
    power = spec.real.square() + spec.imag.square()
    one_pass = (torch.matmul(power.transpose(-1, -2), mel_filterbank(64, 16000)) + EPS).log().transpose(-1, -2)
    torch.testing.assert_close(log_mel(wave, 16000, 64), one_pass, rtol=0, atol=1e-5)
