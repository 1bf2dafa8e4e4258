"""report.md for a run, and the results table shared with the demo."""
from __future__ import annotations

from pathlib import Path

from .config import TrainConfig

def results_table(rows: list[tuple[str, dict]], speed: tuple[str, dict[str, str]] | None = None) -> str:
    """Markdown table: name, test top-1, per-modality probe accuracy, and the speed column: each run's training
    samples/s, or `speed` = (its heading, the text per row name; "—" where it has none)."""
    modalities = sorted({m for _, r in rows for m in r["modalities"]}, key=lambda m: (m != "video", m))
    head = ["method", "fusion", "test top-1"] + [f"probe {m}" for m in modalities] + [speed[0] if speed else
                                                                                      "train samples/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows:
        probes = [f"{r['probe'][m]:.3f}" if m in r.get("probe", {}) else "—" for m in modalities]
        if speed:
            pace = speed[1].get(name, "—")
        else:
            pace = f"{r['train_samples_per_s']:.0f}" if "train_samples_per_s" in r else "— (no training)"
        fusion = "logit mean" if r["method"] == "ume" else (r["fusion"] if len(r["modalities"]) > 1 else "—")
        lines.append("| " + " | ".join([name, fusion, f"{r['test_top1']:.3f}", *probes, pace]) + " |")
    return "\n".join(lines)


def write_report(path: Path, cfg: TrainConfig, results: dict, curves: Path | None = None, details: str = "") -> None:
    """report.md; `details` are the method's own lines (Method.describe)."""
    path.write_text(
        f"# umt run: {cfg.method} ({'+'.join(results['modalities'])})\n\n"
        f"{results_table([(cfg.method, results)])}\n\n"
        f"- test top-5: {results.get('test_top5', float('nan')):.3f}; per-class top-1 in `results.json`\n"
        f"- test protocol: {cfg.test_clips} clip(s) x {cfg.test_crops} crop(s) per sample, logits averaged "
        f"({cfg.view.crop_mode} crops)\n"
        f"- data: `{cfg.data}`\n- processes: {results['processes']}, wall time {results['wall_s']} s\n"
        + "".join(f"- **warning:** {line}\n" for line in results.get("ignored_flags", []))
        + details + _damaged(results.get("bad_samples"))
        + "- probe: a fresh linear classifier on the frozen encoder's pooled features (train split, centre "
          "view), scored on the test split\n- resolved configuration: `config.yaml`; curves: `metrics.jsonl`, "
          "TensorBoard `tensorboard/`\n" + (f"\n![training curves]({curves.name})\n" if curves else ""))


def _damaged(bad: dict | None) -> str:
    """The damaged training samples skipped, per shard and by name (nothing when there were none)."""
    if not bad or not bad["skipped"]:
        return ""
    shards = ", ".join(f"{name} {n}" for name, n in bad["per_shard"].items())
    names = "".join(f"\n  - {sample}" for sample in bad["samples"])
    return (f"- **damaged training samples skipped: {bad['skipped']}** (each replaced by another sample of its "
            f"batch; per shard: {shards}); check them with `umt-data verify`:{names}\n")
