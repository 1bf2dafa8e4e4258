"""PNG pictures of a run and of a comparison (matplotlib, headless)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def training_curves(metrics: Path, out: Path) -> Path | None:
    """Training loss per logged step and validation top-1 per epoch, from metrics.jsonl."""
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    epochs = [r for r in records if "val_top1" in r]
    if not epochs:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1)
    left.set(xlabel="step", ylabel="training loss", title="loss")
    right.plot([r["epoch"] + 1 for r in epochs], [r["val_top1"] for r in epochs], marker="o")
    right.set(xlabel="epoch", ylabel="top-1", title="validation accuracy", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def laziness(rows: list[tuple[str, dict]], out: Path) -> Path:
    """Per-modality linear-probe accuracy of each method's encoders: the picture of modality laziness."""
    modalities = sorted({m for _, r in rows for m in r.get("probe", {})})
    fig, ax = plt.subplots(figsize=(1.6 + 1.7 * len(modalities) * len(rows) / 3, 3.4))
    width = 0.8 / len(rows)
    for i, (name, r) in enumerate(rows):
        xs = [j + i * width for j, m in enumerate(modalities) if m in r.get("probe", {})]
        ys = [r["probe"][m] for m in modalities if m in r.get("probe", {})]
        bars = ax.bar(xs, ys, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(modalities))], [f"{m} encoder" for m in modalities])
    ax.set(ylabel="linear-probe test top-1", ylim=(0, 1.25), title="uni-modal features learned, by training method")
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
