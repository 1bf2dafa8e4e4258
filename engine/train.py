"""The trainer behind `umt-train`: unimodal, joint, umt, ogm-ge and gblend training; ume evaluation.

One loop serves every trainable method: UMT adds λ · Σ_m MSE(student feature, teacher feature)
with targets from a cache or from online teachers; G-Blending weights the fused and auxiliary
heads' losses; OGM-GE rescales encoder gradients between backward and step (engine/balancing.py). Accelerate supplies the process group
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
from accelerate.utils import broadcast_object_list
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from umt.loaders.loading.loader import make_loader
from umt.loaders.stored.views import ViewPolicy
from umt.loaders.stored.shards import load_manifest, modality_inputs

from . import balancing, config_files, plots, resume, ume
from .checkpoint import save_model
from .config import ConfigError, TrainConfig
from .evaluate import accuracies, collect, final_evaluation, linear_probe
from .models import LateFusionNet, ModelConfig
from .report import write_report
from .targets import CachedTargets, OnlineTeachers


class MetricsLog:
    """metrics.jsonl and TensorBoard scalars (OUT/tensorboard), written by the main process only."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self.board = SummaryWriter(str(path.parent / "tensorboard")) if enabled else None

    def keep_until(self, step: int | None) -> None:
        """Start the log afresh, or on resume keep the records up to the checkpoint's step."""
        if not self.enabled:
            return
        kept = []
        if step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if "final" not in line and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        group = "epoch" if "val_top1" in record else "step"
        for key, value in record.items():
            items = value.items() if isinstance(value, dict) else [("", value)]
            for sub, v in items:  # numbers, and dicts of numbers (probes per modality, blend weights)
                if isinstance(v, (int, float)) and key not in ("step", "epoch"):
                    self.board.add_scalar(f"{group}/{key}" + (f"/{sub}" if sub else ""), v, record.get("step", 0))
        self.board.flush()


def run(cfg: TrainConfig) -> dict:
    """Train (or, for UME, evaluate) as `cfg` says; returns the final metrics."""
    cfg.validate()
    manifest = load_manifest(cfg.data)
    inputs = modality_inputs(manifest, sorted(cfg.members) if cfg.method == "ume" else cfg.modalities, cfg.data)
    gpu = torch.cuda.is_available()
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if gpu else "no")
    accelerator = Accelerator(cpu=not gpu, mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum)
    out = Path(cfg.out)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config_files.to_yaml(cfg))
    accelerator.wait_for_everyone()
    log = MetricsLog(out / "metrics.jsonl", accelerator.is_main_process)
    start = time.perf_counter()
    if cfg.method == "ume":
        log.keep_until(None)
        results = ume.evaluate(cfg, len(manifest["classes"]), accelerator.device) if accelerator.is_main_process else {}
    else:
        results = _train(cfg, len(manifest["classes"]), inputs, accelerator, log)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        modalities = sorted(cfg.members) if cfg.method == "ume" else list(cfg.modalities)
        results.update(method=cfg.method, modalities=modalities, fusion=cfg.fusion,
                       wall_s=round(time.perf_counter() - start, 2), processes=accelerator.num_processes)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        curves = plots.training_curves(out / "metrics.jsonl", out / "curves.png") if cfg.method != "ume" else None
        write_report(out / "report.md", cfg, results, curves)
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


def _train(cfg: TrainConfig, num_classes: int, inputs: dict[str, dict], accelerator: Accelerator,
           log: MetricsLog) -> dict:
    torch.manual_seed(cfg.seed)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    model = LateFusionNet(ModelConfig(tuple(cfg.modalities), num_classes, cfg.width, cfg.fusion,
                                      projector=tuple(cfg.distill or cfg.modalities) if cfg.projector else (),
                                      aux_heads=cfg.method == "gblend", inputs=inputs)).to(device)
    targets, view_seed, num_views = _targets(cfg, model, device)

    def loader(epoch: int, skip: int = 0):
        return make_loader(cfg.data, "train", cfg.view, cfg.modalities, ViewPolicy(view_seed, epoch, True, num_views),
                           cfg.batch_size, cfg.num_workers, rank, world, cfg.shuffle_buffer, skip, cfg.backend,
                           device.index if device.type == "cuda" else None)

    total = sum(len(loader(e)) for e in range(cfg.epochs))
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    if total == 0:
        raise ConfigError(f"{cfg.data}: the train split is too small for batch size {cfg.batch_size} "
                          f"on {world} process(es)")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    state = resume.load(cfg)
    pos = resume.restore(state, model, optimizer, schedule) if state else \
        {"epoch": 0, "batch": 0, "step": 0, "samples": 0, "train_time": 0.0, "wait_time": 0.0,
         "blend": {k: 1 / (len(cfg.modalities) + 1) for k in ("fused", *cfg.modalities)}, "blend_losses": None,
         "best_val": None, "best_epoch": None}
    if state and accelerator.is_main_process:
        print(f"umt-train: resuming {cfg.out} at epoch {pos['epoch'] + 1}, batch {pos['batch']}, step {pos['step']}")
    log.keep_until(pos["step"] if state else None)
    model, optimizer = accelerator.prepare(model, optimizer)

    def checkpoint(**where) -> None:
        if accelerator.is_main_process:
            resume.save(cfg.out, cfg, accelerator.unwrap_model(model), optimizer, schedule, {**pos, **where})

    for epoch in range(pos["epoch"], cfg.epochs):
        if pos["step"] == total:
            break
        model.train()
        batches = loader(epoch, pos["batch"] if epoch == pos["epoch"] else 0)
        done_before = pos["batch"] if epoch == pos["epoch"] else 0
        loss_sum = torch.zeros((), device=device)
        head_sums: dict[str, torch.Tensor] = {}
        bar = tqdm(total=len(batches) + done_before, initial=done_before, desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}",
                   unit="step", leave=False, disable=not accelerator.is_main_process)
        epoch_start = tick = time.perf_counter()
        for index, batch in enumerate(batches, start=done_before + 1):
            pos["wait_time"] += time.perf_counter() - tick
            with accelerator.accumulate(model):
                loss, parts = _step(model, batch, targets, cfg, optimizer, schedule, accelerator, pos, epoch)
            for k, v in parts.items():
                head_sums[k] = head_sums.get(k, 0.0) + v
            pos["step"] += 1
            pos["samples"] += len(batch["label"]) * world
            loss_sum += loss
            elapsed = pos["train_time"] + time.perf_counter() - epoch_start
            bar.update()
            bar.set_postfix(samples_per_s=f"{pos['samples'] / elapsed:.0f}",
                            data_wait=f"{pos['wait_time'] / elapsed:.0%}", refresh=False)
            if pos["step"] % cfg.log_every == 0:
                log.write({"step": pos["step"], "epoch": epoch, "loss": loss.item(),
                           **{k: v.item() for k, v in parts.items()}, "lr": schedule.get_last_lr()[0]})
            if pos["step"] == total:
                break
            if cfg.checkpoint_every and pos["step"] % cfg.checkpoint_every == 0:
                checkpoint(epoch=epoch, batch=index, train_time=elapsed)
            tick = time.perf_counter()
        pos["train_time"] += time.perf_counter() - epoch_start
        bar.close()
        record = {"epoch": epoch, "step": pos["step"], "train_loss": (loss_sum / max(len(batches), 1)).item(),
                  "samples_per_s": round(pos["samples"] / pos["train_time"], 1),
                  "data_wait_share": round(pos["wait_time"] / pos["train_time"], 3)}
        net = accelerator.unwrap_model(model).eval()  # every rank evaluates its share of the split
        val = collect(net, cfg.data, "val", cfg.view, list(cfg.modalities), view_seed, cfg.batch_size,
                      cfg.num_workers, device, accelerator)
        scores = accuracies(val["logits"], val["labels"])
        record.update(val_top1=scores["test_top1"], val_top5=scores["test_top5"],
                      val_per_class_top1=scores["per_class_top1"])
        if cfg.probe_every and (epoch + 1) % cfg.probe_every == 0:
            train_feats = collect(net, cfg.data, "train", cfg.view, list(cfg.modalities), view_seed,
                                  cfg.batch_size, cfg.num_workers, device, accelerator)
            if accelerator.is_main_process:
                record["val_probe"] = {m: linear_probe(train_feats["features"][m], train_feats["labels"],
                                                       val["features"][m], val["labels"], num_classes)
                                       for m in cfg.modalities}
        if accelerator.is_main_process and cfg.select == "best_val" and \
                (pos["best_val"] is None or record["val_top1"] > pos["best_val"]):
            pos["best_val"], pos["best_epoch"] = record["val_top1"], epoch
            best_path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
            torch.save(net.state_dict(), best_path(cfg.out))
        model.train()
        if cfg.method == "gblend":
            record["blend_weights"] = _update_blend(pos, accelerator, accelerator.unwrap_model(model), head_sums,
                                                    len(batches), val)
        accelerator.wait_for_everyone()
        log.write(record)
        checkpoint(epoch=epoch + 1, batch=0)
    results = {"steps": pos["step"], "train_samples_per_s": round(pos["samples"] / max(pos["train_time"], 1e-9), 1),
               "data_wait_share": round(pos["wait_time"] / max(pos["train_time"], 1e-9), 3)}
    if world > 1:
        results["replica_max_abs_diff"] = _replica_divergence(model, accelerator)
    net = accelerator.unwrap_model(model).eval()
    if cfg.select == "best_val":  # every rank takes the weights of the best validation epoch
        pos.update(broadcast_object_list([{k: pos[k] for k in ("best_val", "best_epoch")}])[0])
        accelerator.wait_for_everyone()
        net.load_state_dict(torch.load(best_path(cfg.out), map_location=device, weights_only=True))
        results.update(selected_epoch=pos["best_epoch"], selected_val_top1=pos["best_val"])
    if accelerator.is_main_process:
        save_model(Path(cfg.out) / "model.pt", net, {"view": cfg.view.to_dict(), "method": cfg.method,
                                                      "seed": cfg.seed, "view_seed": view_seed})
    results.update(final_evaluation(net, cfg, view_seed, device, accelerator=accelerator))
    return results


def best_path(out: str) -> Path:
    """The weights of the best validation epoch so far (with `select: best_val`)."""
    return Path(out) / "checkpoints" / "best_val.pt"


def _step(model, batch: dict, targets, cfg: TrainConfig, optimizer, schedule, accelerator: Accelerator,
          pos: dict, epoch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimiser step of any trainable method; returns the detached loss and its logged parts."""
    batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
    net = accelerator.unwrap_model(model)
    logits, feats = model(batch)
    logits, feats = logits.float(), {m: f.float() for m, f in feats.items()}  # bf16 under mixed precision
    labels = batch["label"]
    if cfg.method == "gblend":
        losses = balancing.head_losses(net, logits, feats, labels)
        loss = sum(pos["blend"][k] * v for k, v in losses.items())
        parts = {f"ce_{k}": v.detach() for k, v in losses.items()}
    else:
        loss = F.cross_entropy(logits, labels)
        parts = {"ce": loss.detach()}
    if targets:
        distill = sum(F.mse_loss(net.distilled(m, feats[m]), t) for m, t in targets(batch).items()
                      if not cfg.distill or m in cfg.distill)
        loss = loss + cfg.distill_weight * distill
        parts["distill"] = distill.detach()
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    if cfg.method == "ogm-ge" and cfg.ogm_start <= epoch < (cfg.ogm_end if cfg.ogm_end is not None else math.inf):
        shares = balancing.modality_logits(net, {m: f.detach() for m, f in feats.items()})
        coeffs = balancing.ogm_coefficients(shares, labels, cfg.ogm_alpha, lambda t: accelerator.reduce(t, "sum"))
        noise = torch.Generator().manual_seed(cfg.seed * 1_000_003 + pos["step"]) if cfg.ogm_ge else None
        balancing.modulate_gradients(net, coeffs, noise)
        parts.update({f"ogm_k_{m}": torch.tensor(k) for m, k in coeffs.items()})
    optimizer.step()
    schedule.step()
    return loss.detach(), parts


@torch.no_grad()
def _update_blend(pos: dict, accelerator: Accelerator, net: LateFusionNet, head_sums: dict, num_batches: int,
                  val: dict | None) -> dict:
    """G-Blending's weights for the next epoch from this and the previous epoch's head losses."""
    train = {k.removeprefix("ce_"): accelerator.reduce(v / max(num_batches, 1), "mean").item()
             for k, v in sorted(head_sums.items()) if k.startswith("ce_")}
    pairs = None
    if accelerator.is_main_process:  # validation losses of the fused and auxiliary heads
        device = next(net.parameters()).device
        val_loss = {"fused": F.cross_entropy(val["logits"], val["labels"]).item()}
        val_loss.update({m: F.cross_entropy(head(val["features"][m].to(device)).cpu(), val["labels"]).item()
                         for m, head in net.aux_heads.items()})
        pairs = {k: (train[k], val_loss[k]) for k in train}
    pairs = broadcast_object_list([pairs])[0]
    if pos["blend_losses"] is not None:
        pos["blend"] = balancing.blend_weights(pos["blend_losses"], pairs)
    pos["blend_losses"] = pairs
    return dict(pos["blend"])


def _replica_divergence(model: torch.nn.Module, accelerator: Accelerator) -> float:
    """Largest parameter difference between any rank and rank 0: 0.0 unless DDP lost sync."""
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])[None]
    replicas = accelerator.gather(flat)
    return (replicas - replicas[0]).abs().max().item()
