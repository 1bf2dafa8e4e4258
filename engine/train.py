"""The trainer behind `umt-train`: uni-modal, joint (late fusion), UMT, and UME evaluation.

One loop serves every trainable method; UMT only adds λ · Σ_m MSE(student feature, teacher
feature) with targets from a cache or from online teachers. Accelerate supplies the process group
(DDP over NCCL on GPUs, gloo on CPU); each rank builds its own loader over disjoint shards, so the
loader is not passed through `prepare` (huggingface/accelerate #2162).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm import tqdm

from umt.loaders.pipeline import ViewPolicy, iterate, make_loader
from umt.loaders.shards import load_manifest

from .checkpoint import load_model, save_model
from .config import ConfigError, TrainConfig
from .evaluate import collect, linear_probe, top1
from .models import LateFusionNet, ModelConfig
from .report import write_report
from .targets import CachedTargets, OnlineTeachers


class MetricsLog:
    """metrics.jsonl, written by the main process only."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled:
            path.write_text("")

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")


def run(cfg: TrainConfig) -> dict:
    """Train (or, for UME, evaluate) as `cfg` says; returns the final metrics."""
    cfg.validate()
    manifest = load_manifest(cfg.data)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    out = Path(cfg.out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(cfg.to_yaml())
    accelerator.wait_for_everyone()
    log = MetricsLog(out / "metrics.jsonl", accelerator.is_main_process)
    start = time.perf_counter()
    if cfg.method == "ume":
        results = _evaluate_ume(cfg, len(manifest["classes"]), accelerator) if accelerator.is_main_process else {}
    else:
        results = _train(cfg, len(manifest["classes"]), accelerator, log)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        modalities = sorted(cfg.members) if cfg.method == "ume" else list(cfg.modalities)
        results.update(method=cfg.method, modalities=modalities, fusion=cfg.fusion,
                       wall_s=round(time.perf_counter() - start, 2), processes=accelerator.num_processes)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        write_report(out / "report.md", cfg, results)
        log.write({"final": results})
    return results if accelerator.is_main_process else {}


def _targets(cfg: TrainConfig, model: LateFusionNet, device: torch.device):
    """UMT's teacher targets and the view seed / view count they fix (None for other methods)."""
    view_seed = cfg.seed if cfg.view_seed is None else cfg.view_seed
    if cfg.method != "umt":
        return None, view_seed, cfg.num_views
    if cfg.cache:
        targets = CachedTargets(cfg.cache, cfg.data, cfg.view, device, cfg.teachers or None,
                                int(cfg.cache_budget_gb * 2**30))
        for name, given, cached in (("view_seed", cfg.view_seed, targets.seed),
                                    ("num_views", cfg.num_views, targets.num_views)):
            if given is not None and given != cached:
                raise ConfigError(f"{name}={given} but the cache {cfg.cache} was built with {cached}")
        view_seed, num_views = targets.seed, targets.num_views
    else:
        targets = OnlineTeachers(cfg.teachers, device)
        num_views = cfg.num_views
    dims = targets.dims()
    student = {m: enc.out_dim for m, enc in model.encoders.items()}
    if any(dims.get(m) != student[m] for m in student):
        raise ConfigError(f"teacher feature dims {dims} do not match the student's {student} "
                          "(train the student with the teachers' --width)")
    return targets, view_seed, num_views


def _train(cfg: TrainConfig, num_classes: int, accelerator: Accelerator, log: MetricsLog) -> dict:
    torch.manual_seed(cfg.seed)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    model = LateFusionNet(ModelConfig(tuple(cfg.modalities), num_classes, cfg.width, cfg.fusion)).to(device)
    targets, view_seed, num_views = _targets(cfg, model, device)

    def loader(epoch: int):
        return make_loader(cfg.data, "train", cfg.view, cfg.modalities, ViewPolicy(view_seed, epoch, True, num_views),
                           cfg.batch_size, cfg.num_workers, rank, world, cfg.shuffle_buffer)

    total = sum(loader(e)[1] for e in range(cfg.epochs))
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    if total == 0:
        raise ConfigError(f"{cfg.data}: the train split is too small for batch size {cfg.batch_size} "
                          f"on {world} process(es)")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    model, optimizer = accelerator.prepare(model, optimizer)
    step, samples, train_time, wait_time = 0, 0, 0.0, 0.0
    for epoch in range(cfg.epochs):
        model.train()
        batches, n = loader(epoch)
        loss_sum = torch.zeros((), device=device)
        bar = tqdm(total=n, desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False,
                   disable=not accelerator.is_main_process)
        epoch_start = tick = time.perf_counter()
        for batch in iterate(batches, n):
            wait_time += time.perf_counter() - tick
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            logits, feats = model(batch)
            ce = F.cross_entropy(logits, batch["label"])
            distill = sum(F.mse_loss(feats[m], t) for m, t in targets(batch).items()) if targets else torch.zeros((), device=device)
            loss = ce + cfg.distill_weight * distill
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            schedule.step()
            step += 1
            samples += len(batch["label"]) * world
            loss_sum += loss.detach()
            bar.update()
            if step % 10 == 0:
                bar.set_postfix(samples_per_s=f"{samples / (time.perf_counter() - epoch_start + train_time):.0f}",
                                data_wait=f"{wait_time / (time.perf_counter() - epoch_start + train_time):.0%}",
                                refresh=False)
            if step % cfg.log_every == 0:
                log.write({"step": step, "epoch": epoch, "loss": loss.item(), "ce": ce.item(),
                           "distill": distill.detach().item(), "lr": schedule.get_last_lr()[0]})
            if step == total:
                break
            tick = time.perf_counter()
        train_time += time.perf_counter() - epoch_start
        bar.close()
        record = {"epoch": epoch, "step": step, "train_loss": (loss_sum / max(n, 1)).item(),
                  "samples_per_s": round(samples / train_time, 1), "data_wait_share": round(wait_time / train_time, 3)}
        if accelerator.is_main_process:
            record["val_top1"] = _top1(accelerator.unwrap_model(model), cfg, "val", view_seed, device)
            model.train()
        accelerator.wait_for_everyone()
        log.write(record)
        if step == total:
            break
    results = {"steps": step, "train_samples_per_s": round(samples / train_time, 1),
               "data_wait_share": round(wait_time / train_time, 3)}
    if world > 1:
        results["replica_max_abs_diff"] = _replica_divergence(model, accelerator)
    if accelerator.is_main_process:
        net = accelerator.unwrap_model(model).eval()
        save_model(Path(cfg.out) / "model.pt", net, {"view": cfg.view.to_dict(), "method": cfg.method,
                                                      "seed": cfg.seed, "view_seed": view_seed})
        results.update(_final_eval(net, cfg, view_seed, device))
    return results


def _replica_divergence(model: torch.nn.Module, accelerator: Accelerator) -> float:
    """Largest parameter difference between any rank and rank 0: 0.0 unless DDP lost sync."""
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])[None]
    replicas = accelerator.gather(flat)
    return (replicas - replicas[0]).abs().max().item()


def _top1(net: LateFusionNet, cfg: TrainConfig, split: str, seed: int, device: torch.device) -> float:
    net.eval()
    res = collect(net, cfg.data, split, cfg.view, list(cfg.modalities), seed, cfg.batch_size, cfg.num_workers, device)
    return top1(res["logits"], res["labels"])


def _final_eval(forward, cfg: TrainConfig, seed: int, device: torch.device,
                modalities: tuple[str, ...] | None = None) -> dict:
    """Test top-1 and, per modality, a linear probe fit on frozen train features."""
    modalities = modalities or cfg.modalities
    args = (cfg.view, list(modalities), seed, cfg.batch_size, cfg.num_workers, device)
    test = collect(forward, cfg.data, "test", *args)
    out = {"test_top1": top1(test["logits"], test["labels"]), "probe": {}}
    if cfg.probe:
        train = collect(forward, cfg.data, "train", *args)
        classes = test["logits"].shape[1]
        out["probe"] = {m: linear_probe(train["features"][m], train["labels"], test["features"][m],
                                        test["labels"], classes) for m in modalities}
    return out


def _evaluate_ume(cfg: TrainConfig, num_classes: int, accelerator: Accelerator) -> dict:
    """UME: the uni-modal models' logits averaged; no joint training at all."""
    members = {}
    for m, path in sorted(cfg.members.items()):
        model, _ = load_model(path)
        if tuple(model.cfg.modalities) != (m,) or model.cfg.num_classes != num_classes:
            raise ConfigError(f"UME member {path} is not a uni-modal {m} model for {num_classes} classes")
        members[m] = model.to(accelerator.device).eval()

    def forward(batch):
        outs = {m: net(batch) for m, net in members.items()}
        logits = torch.stack([o[0] for o in outs.values()]).mean(0)
        return logits, {m: o[1][m] for m, o in outs.items()}

    seed = cfg.seed if cfg.view_seed is None else cfg.view_seed
    with torch.no_grad():
        return _final_eval(forward, cfg, seed, accelerator.device, tuple(members))
