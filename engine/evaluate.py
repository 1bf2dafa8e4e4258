"""Evaluation: top-1 accuracy and linear probes of frozen encoders (the modality-laziness gauge)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from umt.loaders.loading.loader import finish_device, make_loader
from umt.loaders.stored.shards import load_manifest, split_shards
from umt.loaders.stored.views import CENTRE, ViewPolicy, ViewSpec, eval_views

Forward = Callable[[dict], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@torch.no_grad()
def collect(forward: Forward, data: str, split: str, spec: ViewSpec, modalities: list[str],
            batch_size: int, num_workers: int, device: torch.device, accelerator=None,
            views: Sequence[int] = (CENTRE,), finish_on: torch.device | None = None) -> dict:
    """Rows, labels, logits and pooled features of every sample of a split, each averaged over `views`
    (evaluation view indices, which no seed moves: the centre view, or `eval_views(T, C)`).

    One in-order pass per view, as PySlowFast's multi-view test decodes each view on its own; every
    pass reads the same rows in the same order. With an Accelerator of several processes, every rank
    must call this: each reads its contiguous share of the split's rows and the results are gathered
    to all ranks in row order (a split with fewer samples than processes is read whole by every rank).
    `finish_on`: where the cpu backend finishes the views (make_loader).
    """
    world = accelerator.num_processes if accelerator is not None else 1
    split_up = world > 1 and sum(s["count"] for s in split_shards(load_manifest(data), split)) >= world
    rank = accelerator.process_index if split_up else 0
    passes = [_one_view(forward, make_loader(data, split, spec=spec, modalities=modalities,
                                             policy=ViewPolicy(0, view=view), batch_size=batch_size,
                                             num_workers=num_workers, rank=rank, world=world if split_up else 1,
                                             finish_on=finish_on),
                          modalities, device)
              for view in views]
    if any(not torch.equal(p["rows"], passes[0]["rows"]) for p in passes):
        raise RuntimeError(f"{data} {split}: the test views' passes read different rows")  # the plan is per split
    local = {"rows": passes[0]["rows"], "labels": passes[0]["labels"],
             "logits": torch.stack([p["logits"] for p in passes]).mean(0),
             "features": {m: torch.stack([p["features"][m] for p in passes]).mean(0) for m in modalities}}
    if not split_up:
        return local
    return {"rows": _gather(local["rows"], accelerator), "labels": _gather(local["labels"], accelerator),
            "logits": _gather(local["logits"], accelerator),
            "features": {m: _gather(v, accelerator) for m, v in local["features"].items()}}


def _one_view(forward: Forward, loader, modalities: list[str], device: torch.device) -> dict:
    """Rows, labels, logits and features of one pass of an evaluation loader."""
    rows, labels, logits, feats = [], [], [], {m: [] for m in modalities}
    for batch in loader:
        out, f = forward({k: v.to(device) for k, v in batch.items()})
        rows.append(batch["row"])
        labels.append(batch["label"])
        logits.append(out.float().cpu())
        for m in modalities:
            feats[m].append(f[m].float().cpu())
    return {"rows": torch.cat(rows), "labels": torch.cat(labels), "logits": torch.cat(logits),
            "features": {m: torch.cat(v) for m, v in feats.items()}}


def _gather(tensor: torch.Tensor, accelerator) -> torch.Tensor:
    """Every rank's rows, in rank order (ranks may hold different numbers of rows)."""
    counts = accelerator.gather(torch.tensor([len(tensor)], device=accelerator.device)).tolist()
    padded = accelerator.pad_across_processes(tensor.to(accelerator.device), dim=0)
    rows = padded.shape[0]
    everything = accelerator.gather(padded).cpu()
    return torch.cat([everything[r * rows:r * rows + n] for r, n in enumerate(counts)])


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, weight_decay: float = 1e-3, steps: int = 100) -> float:
    """Test accuracy of a fresh linear classifier fit (L-BFGS, full batch) on frozen features.

    Units constant on the training split (dead ReLUs) are dropped: standardised by their ~0 std they
    would blow any test-time activity up by ~1e6. The std of the others is clamped for the same reason.
    """
    mean, std = train_x.mean(0), train_x.std(0)
    live = std > 1e-6 * std.max().clamp_min(1e-12)
    std = std.clamp_min(1e-3 * std[live].mean()) if live.any() else std
    x, xt = ((train_x - mean) / std)[:, live], ((test_x - mean) / std)[:, live]
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(x), train_y) + weight_decay * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return top1(head(xt), test_y)


def evaluate_split(cfg, forward: Forward, split: str, device: torch.device, accelerator=None,
                   modalities: Sequence[str] | None = None, views: Sequence[int] = (CENTRE,)) -> dict:
    """The run's evaluation entry: `collect` over a split with the run's data, views, batch size, workers and
    --finish (cfg: a TrainConfig). Every method, UME and the trainer's validation read a split through it, so
    none of them drops a run setting."""
    return collect(forward, cfg.data, split, cfg.view, list(modalities or cfg.modalities), cfg.batch_size,
                   cfg.num_workers, device, accelerator, views=views, finish_on=finish_device(cfg.finish, device))


def final_evaluation(forward: Forward, cfg, device: torch.device, modalities: tuple[str, ...] | None = None,
                     scores: Callable[[torch.Tensor], torch.Tensor] = lambda logits: logits, accelerator=None) -> dict:
    """Test top-1 / top-5 / per-class accuracy under the run's test protocol (cfg.test_clips x
    cfg.test_crops views, logits averaged) and, per modality, a linear probe on frozen train features
    (centre view) tested on the test features (averaged over the same views).

    `scores` turns what `forward` returns as logits into class scores (UME combines its members here).
    """
    modalities = modalities or cfg.modalities
    test = evaluate_split(cfg, forward, "test", device, accelerator, modalities,
                          eval_views(cfg.test_clips, cfg.test_crops))
    scored = accuracies(scores(test["logits"]), test["labels"])
    out = {"test_top1": scored.pop("top1"), "test_top5": scored.pop("top5"), **scored, "probe": {},
           "test_protocol": {"clips": cfg.test_clips, "crops": cfg.test_crops, "views": cfg.test_clips * cfg.test_crops,
                             "crop_mode": cfg.view.crop_mode, "combine": "mean of logits"}}
    if cfg.probe:
        train = evaluate_split(cfg, forward, "train", device, accelerator, modalities)
        if accelerator is not None and not accelerator.is_main_process:
            return out  # the probes are fit once, on the main process
        classes = out["num_classes"]
        out["probe"] = {m: linear_probe(train["features"][m], train["labels"], test["features"][m],
                                        test["labels"], classes) for m in modalities}
    return out


def accuracies(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    """top1, top5, per-class top-1 (None for a class absent from `labels`) and the class count."""
    k = min(5, scores.shape[1])
    per_class = [(scores.argmax(1)[labels == c] == c).float().mean().item() if (labels == c).any() else None
                 for c in range(scores.shape[1])]
    return {"top1": top1(scores, labels),
            "top5": (scores.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean().item(),
            "per_class_top1": per_class, "num_classes": scores.shape[1]}
