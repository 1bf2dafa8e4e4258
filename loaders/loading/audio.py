"""Log-mel spectrogram in plain torch (torchaudio has no CPU build on our machines)."""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..stored.media import FULL_SCALE

N_FFT = 400        # 25 ms at 16 kHz
HOP = 160          # 10 ms at 16 kHz
EPS = 1e-6
CPU_CHUNK = 128    # frames a pass on a CPU (log_mel): 128 of 32..256 was the fastest in a loader worker's call


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
    """Waveform [..., S] float → log-mel [..., n_mels, 1 + S // HOP] (frames centred, reflect-padded, as
    torch.stft's center=True). The sums and the log run in place on this function's own intermediates (not
    differentiable). On a CPU the frames go through the FFT, the power and the filterbank CPU_CHUNK at a time: a
    10 s window's spectrum (1.6 MB) then never leaves the core's cache, which a loader worker's decode has just
    filled — the same values, 2.2 ms less a clip in the worker's per-clip call at --realistic settings
    (benchmarks/RESULTS.md, "The log-mel in chunks"). On a GPU, one pass."""
    lead, samples = waveform.shape[:-1], waveform.shape[-1]
    frames = 1 + samples // HOP
    step = CPU_CHUNK if waveform.device.type == "cpu" else frames
    padded = F.pad(waveform.reshape(-1, 1, samples), (N_FFT // 2, N_FFT // 2), mode="reflect")[:, 0]
    window, bank = _hann(N_FFT, waveform.device), _filterbank_on(n_mels, sample_rate, waveform.device)
    mel = torch.empty((padded.shape[0], frames, n_mels), device=waveform.device)
    for first in range(0, frames, step):
        stop = min(frames, first + step)
        spec = torch.stft(padded[:, first * HOP:(stop - 1) * HOP + N_FFT], N_FFT, HOP, window=window, center=False,
                          return_complex=True)
        mel[:, first:stop] = torch.matmul(spec.real.square().add_(spec.imag.square()).transpose(-1, -2), bank)
    return mel.add_(EPS).log_().transpose(-1, -2).reshape(*lead, n_mels, frames)


@functools.lru_cache(maxsize=4)
def _hann(n: int, device: torch.device) -> torch.Tensor:
    return torch.hann_window(n, device=device)


@functools.lru_cache(maxsize=8)
def _filterbank_on(n_mels: int, sample_rate: int, device: torch.device) -> torch.Tensor:
    """The filterbank where the waveform is (log-mels are also computed on the training device, finish.py)."""
    return mel_filterbank(n_mels, sample_rate).to(device)
