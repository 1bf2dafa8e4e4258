"""Log-mel spectrogram in plain torch (torchaudio has no CPU build on our machines)."""
from __future__ import annotations

import functools
import math

import torch

from ..stored.media import FULL_SCALE

N_FFT = 400        # 25 ms at 16 kHz
HOP = 160          # 10 ms at 16 kHz
EPS = 1e-6


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


@functools.lru_cache(maxsize=8)
def mel_filterbank(n_mels: int, sample_rate: int, n_fft: int = N_FFT) -> torch.Tensor:
    """HTK-style triangular filters [n_fft // 2 + 1, n_mels] from 0 Hz to Nyquist."""
    mel_points = torch.linspace(0.0, _hz_to_mel(sample_rate / 2), n_mels + 2, dtype=torch.float64)
    hz_points = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lower, centre, upper = hz_points[:-2], hz_points[1:-1], hz_points[2:]
    rising = (freqs[:, None] - lower) / (centre - lower)
    falling = (upper - freqs[:, None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def pcm_float(samples: torch.Tensor) -> torch.Tensor:
    """Stored 16-bit samples → float32 in [-1, 1) (exactly: the scale is a power of 2), where they lie."""
    return samples.float() / FULL_SCALE


def log_mel(waveform: torch.Tensor, sample_rate: int, n_mels: int) -> torch.Tensor:
    """Waveform [..., S] float → log-mel [..., n_mels, 1 + S // HOP]. The sums and the log run in place on this
    function's own intermediates (not differentiable): the same values, 0.65 ms less of a 10 s window's 2.1 ms on
    one CPU thread (fewer fresh tensors to allocate and fill)."""
    device = waveform.device
    spec = torch.stft(waveform, N_FFT, HOP, window=_hann(N_FFT, device), center=True, return_complex=True)
    power = spec.real.square().add_(spec.imag.square())
    mel = torch.matmul(power.transpose(-1, -2), _filterbank_on(n_mels, sample_rate, device))
    return mel.add_(EPS).log_().transpose(-1, -2)


@functools.lru_cache(maxsize=4)
def _hann(n: int, device: torch.device) -> torch.Tensor:
    return torch.hann_window(n, device=device)


@functools.lru_cache(maxsize=8)
def _filterbank_on(n_mels: int, sample_rate: int, device: torch.device) -> torch.Tensor:
    """The filterbank where the waveform is (log-mels are also computed on the training device, finish.py)."""
    return mel_filterbank(n_mels, sample_rate).to(device)
