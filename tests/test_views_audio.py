import torch

from umt.loaders.loading.audio import log_mel
import numpy as np

from umt.loaders.stored.views import (CENTRE, Geometry, ViewPolicy, ViewSpec, make_view, make_views, view_indices_jit,
                               view_params, view_params_jit)

SPEC = ViewSpec(frames=4, stride=2, crop=16, audio_seconds=0.5)
GEOM = Geometry(frames=12, height=24, width=20, audio_samples=16000, sample_rate=16000)


def test_view_is_a_pure_function_of_seed_row_view():
    assert make_view(3, 10, 1, SPEC, GEOM) == make_view(3, 10, 1, SPEC, GEOM)
    views = {make_view(3, 10, v, SPEC, GEOM) for v in range(8)}
    assert len(views) > 4  # different view indices give different crops
    assert views != {make_view(4, 10, v, SPEC, GEOM) for v in range(8)}  # and so do other seeds
    for v in range(50):
        view = make_view(0, v, v, SPEC, GEOM)
        assert 0 <= view.t0 <= 12 - 7 and 0 <= view.y0 <= 8 and 0 <= view.x0 <= 4
        assert 0 <= view.audio_offset <= 8000


def test_centre_view_and_train_view_index():
    assert make_view(0, 5, CENTRE, SPEC, GEOM).as_tuple() == (2, 4, 2, 0, 4000)
    assert {ViewPolicy(0, e, True, 3).index(7) for e in range(40)} == {0, 1, 2}
    assert ViewPolicy(0, 5, True).index(7) == 5 and ViewPolicy(0, 5).index(7) == CENTRE
    assert ViewPolicy(0, 5, True, 3, view=2).index(7) == 2


def test_vector_views_equal_the_scalar_ones_and_numba_equals_numpy():
    rows, views = np.arange(500), np.tile([CENTRE, 0, 1, 2, 7], 100)
    many = make_views(3, rows, views, SPEC, GEOM)
    assert many.tolist() == [list(make_view(3, r, v, SPEC, GEOM).as_tuple()) for r, v in zip(rows, views)]
    assert np.array_equal(view_params_jit(3, rows, views, 5, 8, 4, 8000, True), view_params(3, rows, views, 5, 8, 4, 8000, True))
    policy = ViewPolicy(9, 4, True, 5)
    assert np.array_equal(view_indices_jit(9, 4, rows, 5), policy.indices(rows))


def test_view_draws_are_uniform():
    """Each offset takes every value of its range about equally often; the flip is a fair coin."""
    params = make_views(1, np.arange(20000), np.zeros(20000, np.int64), SPEC, GEOM)
    for column, values in ((0, 6), (1, 9), (2, 5), (3, 2)):
        counts = np.bincount(params[:, column], minlength=values)
        assert len(counts) == values and counts.min() > 0.9 * 20000 / values and counts.max() < 1.1 * 20000 / values


def test_log_mel_peaks_at_the_tone():
    t = torch.arange(16000) / 16000
    low, high = (log_mel(torch.sin(2 * torch.pi * f * t), 16000, 40).mean(-1).argmax().item() for f in (300.0, 4000.0))
    assert low < high
    assert log_mel(torch.zeros(16000), 16000, 40).shape == (40, 101)
