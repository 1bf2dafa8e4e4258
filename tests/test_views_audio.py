import torch

from umt.loaders.audio import log_mel
from umt.loaders.views import CENTRE, Geometry, ViewSpec, make_view, train_view_index

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
    assert {train_view_index(0, e, 7, 3) for e in range(40)} == {0, 1, 2}
    assert train_view_index(0, 5, 7, None) == 5


def test_log_mel_peaks_at_the_tone():
    t = torch.arange(16000) / 16000
    low, high = (log_mel(torch.sin(2 * torch.pi * f * t), 16000, 40).mean(-1).argmax().item() for f in (300.0, 4000.0))
    assert low < high
    assert log_mel(torch.zeros(16000), 16000, 40).shape == (40, 101)
