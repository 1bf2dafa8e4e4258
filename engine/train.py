"""The trainer behind `umt-train`: one loop for every trainable method (engine/methods); `--method ume`
evaluates through engine/ume.py and never enters the loop.

The loop knows no method by name: it tells the method object the optimiser steps of each epoch it
starts or resumes (PMR, modality dropout, MLA), asks it for the loss of each micro-batch, lets it change
the gradients after the backward passes of an optimiser step's window (OGM-GE, MMPareto, AGM, MLA) and
update itself at each epoch's end (G-Blending, PMR), and checkpoints its state with the loop's own
(`LoopState`).
Gradient accumulation follows Accelerate's manual recipe: an epoch's micro-batches are cut into
windows of `grad_accum` (the last window of an epoch may be shorter; windows never cross an epoch's
end); each micro-batch's loss is divided by its window's length and backpropagated, without DDP
synchronisation except on the window's last; then one optimiser step, one scheduler step, zero_grad.
`max_steps`, `log_every` and `checkpoint_every` count optimiser steps. Accelerate supplies the process
group (DDP over NCCL on GPUs, gloo on CPU) and the trackers (`log_with`); each rank builds its own
loader over disjoint shards, so the loader is not passed through `prepare` (huggingface/accelerate #2162).
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from tqdm import tqdm

from umt.loaders.loading.loader import finish_device, make_loader
from umt.loaders.loading.bad import BadSamples, Skipped
from umt.loaders.stored.views import ViewPolicy
from umt.loaders.stored.shards import load_manifest, modality_inputs

from . import config_files, plots, resume, ume
from .checkpoint import save_model
from .config import ConfigError, TrainConfig
from .evaluate import accuracies, evaluate_split, final_evaluation, linear_probe
from .methods import Method, method_for, resolved
from .models import LateFusionNet, ModelConfig
from .trace import SampleTrace
from .report import write_report


class MetricsLog:
    """metrics.jsonl, and the same numbers to Accelerate's trackers; written by the main process only."""

    def __init__(self, path: Path, accelerator: Accelerator):
        self.path, self.accelerator, self.enabled = path, accelerator, accelerator.is_main_process

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
        scalars = {}
        for key, value in record.items():
            items = value.items() if isinstance(value, dict) else [("", value)]
            for sub, v in items:  # numbers, and dicts of numbers (probes per modality, blend weights)
                if isinstance(v, (int, float)) and key not in ("step", "epoch"):
                    scalars[f"{group}/{key}" + (f"/{sub}" if sub else "")] = v
        if scalars and self.accelerator.trackers:
            self.accelerator.log(scalars, step=record.get("step", 0))


@dataclass
class LoopState:
    """Where the loop is, checkpointed whole: a resumed run continues from exactly here."""
    epoch: int = 0              # current epoch
    batch: int = 0              # global micro-batches done in it (always the end of an optimiser step's window)
    step: int = 0               # optimiser steps done
    global_batch: int = 0       # samples per micro-batch over all processes (the plan's G)
    streams: int = 0            # the plan's streams: the process count the run started with
    world: int = 0              # processes that wrote the checkpoint
    samples: int = 0
    train_time: float = 0.0
    wait_time: float = 0.0
    epoch_loss: float = 0.0     # sum over the epoch's optimiser steps so far of their mean loss
    epoch_steps: int = 0
    best_val: float | None = None
    best_epoch: int | None = None
    method: dict[str, Any] = field(default_factory=dict)  # the method's own state (Method.state_dict)
    skipped: list[tuple[int, Skipped]] = field(default_factory=list)  # damaged samples met, all ranks: (epoch, record)

    def __post_init__(self) -> None:
        """A checkpoint may hold the damaged samples as "epoch<TAB>shard<TAB>key<TAB>reason" strings."""
        self.skipped = [(int(e.split("\t")[0]), Skipped(*e.split("\t")[1:])) if isinstance(e, str) else e
                        for e in self.skipped]


def run(cfg: TrainConfig, ignored: Sequence[str] = ()) -> dict:
    """Train (or, for UME, evaluate) as `cfg` says; writes the run directory; returns the final metrics.
    `ignored`: one line for each flag given that the method does not read (results.json and report.md say them)."""
    cfg.validate()
    gpu = torch.cuda.is_available()
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if gpu else "no")
    out = Path(cfg.out)
    trackers = None if cfg.log_with == "none" or cfg.method == "ume" else cfg.log_with
    accelerator = Accelerator(cpu=not gpu, mixed_precision=precision, log_with=trackers, project_dir=str(out))
    cfg = resolved(cfg, accelerator.num_processes)
    method = None if cfg.method == "ume" else method_for(cfg)
    if method is None:
        ume.check(cfg)
    manifest = load_manifest(cfg.data)
    modalities = sorted(cfg.members) if method is None else list(cfg.modalities)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config_files.to_yaml(cfg))
    accelerator.wait_for_everyone()
    log = MetricsLog(out / "metrics.jsonl", accelerator)
    start = time.perf_counter()
    if method is None:
        log.keep_until(None)
        results = ume.evaluate(cfg, len(manifest["classes"]), accelerator.device) if accelerator.is_main_process else {}
    else:
        if trackers:
            accelerator.init_trackers("tensorboard" if trackers == "tensorboard" else cfg.method)
        inputs = modality_inputs(manifest, cfg.modalities, cfg.data)
        results = _train(cfg, method, len(manifest["classes"]), inputs, accelerator, log)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        results.update(method=cfg.method, modalities=modalities, fusion=cfg.fusion,
                       wall_s=round(time.perf_counter() - start, 2), processes=accelerator.num_processes,
                       **({"ignored_flags": list(ignored)} if ignored else {}))
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        curves = plots.training_curves(out / "metrics.jsonl", out / "curves.png") if method else None
        write_report(out / "report.md", cfg, results, curves, method.describe() if method else "")
        log.write({"final": results})
    accelerator.end_training()
    return results if accelerator.is_main_process else {}


def _train(cfg: TrainConfig, method: Method, num_classes: int, inputs: dict[str, dict], accelerator: Accelerator,
           log: MetricsLog) -> dict:
    torch.manual_seed(cfg.seed)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    model = LateFusionNet(ModelConfig(tuple(cfg.modalities), num_classes, cfg.width, cfg.fusion, inputs=inputs,
                                      **method.model_options())).to(device)
    seed, num_views = method.prepare(model, device)

    saved = resume.load(cfg, world)
    glob, batch_size, streams = resume.layout(cfg, world, saved)

    def loader(epoch: int, skip: int = 0):
        return make_loader(cfg.data, "train", spec=cfg.view, modalities=cfg.modalities,
                           policy=ViewPolicy(seed, epoch, True, num_views), batch_size=batch_size,
                           num_workers=cfg.num_workers, rank=rank, world=world, skip=skip, backend=cfg.backend,
                           device_id=device.index if device.type == "cuda" else None,
                           bad_samples=BadSamples(cfg.bad_samples, cfg.bad_samples_limit), streams=streams,
                           finish_on=finish_device(cfg.finish, device))

    epoch_batches = [len(loader(e)) for e in range(cfg.epochs)]
    total = sum(math.ceil(n / cfg.grad_accum) for n in epoch_batches)  # optimiser steps
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    if total == 0:
        raise ConfigError(f"{cfg.data}: the train split is too small for a global batch of {glob} "
                          f"on {world} process(es)")
    optimizer = make_optimizer(cfg, model.parameters())
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    state = LoopState(**resume.restore(saved, model, optimizer, schedule)) if saved else LoopState()
    state.global_batch, state.streams, state.world = glob, streams, world
    if saved:
        method.load_state_dict(state.method)
    if saved and accelerator.is_main_process:
        print(f"umt-train: resuming {cfg.out} at epoch {state.epoch + 1}, batch {state.batch}, step {state.step}")
    log.keep_until(state.step if saved else None)
    model, optimizer = accelerator.prepare(model, optimizer)
    net = accelerator.unwrap_model(model)

    met: list[tuple[int, Skipped]] = []  # damaged samples this rank met since the ranks last pooled them
    trace = SampleTrace(cfg.out, rank, world, state.step)

    def pool_skipped() -> None:
        """Every rank's damaged samples into the loop state (all ranks call it), so a checkpoint holds them all."""
        state.skipped += gather_object(list(met)) if world > 1 else met
        met.clear()

    def checkpoint(**now) -> None:
        """Save the loop state (with `now`: the values that hold mid-epoch, e.g. the time so far)."""
        pool_skipped()
        state.method = method.state_dict()
        if accelerator.is_main_process:
            resume.save(cfg.out, cfg, net, optimizer, schedule, {**asdict(state), **now})

    while state.epoch < cfg.epochs and state.step < total:
        epoch, size = state.epoch, epoch_batches[state.epoch]
        first_step = sum(math.ceil(n / cfg.grad_accum) for n in epoch_batches[:epoch])
        method.begin_epoch(epoch, range(first_step, first_step + math.ceil(size / cfg.grad_accum)))
        if state.batch == 0 and method.fresh_optimizer(epoch):
            optimizer.optimizer.state.clear()
        model.train()
        batches = loader(epoch, state.batch)
        # the bar is closed (cleared) on an error too, so the error's one line stands alone
        with tqdm(total=size, initial=state.batch, desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}",
                  unit="batch", leave=False, disable=not accelerator.is_main_process) as bar:
            epoch_start = tick = time.perf_counter()
            window_loss = torch.zeros((), device=device)
            for index, batch in enumerate(batches, start=state.batch + 1):
                state.wait_time += time.perf_counter() - tick
                met.extend(_warn_skipped(batch.pop("bad_samples", []), epoch))
                trace.write(epoch, index, batch["row"], batch["view"])
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                first = (index - 1) // cfg.grad_accum * cfg.grad_accum
                window = min(cfg.grad_accum, size - first)
                last = index == first + window
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    logits, feats = model(batch)
                    logits, feats = logits.float(), {m: f.float() for m, f in feats.items()}  # bf16 under mixed precision
                    loss, parts = method.loss(net, batch, logits, feats)
                    accelerator.backward(loss / window)
                window_loss += loss.detach() / window
                state.samples += len(batch["label"]) * world
                bar.update()
                if not last:
                    tick = time.perf_counter()
                    continue
                parts.update(method.after_backward(net, batch, feats, epoch, state.step, accelerator))
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.batch = index
                state.epoch_loss += float(window_loss)
                state.epoch_steps += 1
                elapsed = state.train_time + time.perf_counter() - epoch_start
                bar.set_postfix(samples_per_s=f"{state.samples / elapsed:.0f}",
                                data_wait=f"{state.wait_time / elapsed:.0%}", refresh=False)
                if state.step % cfg.log_every == 0:
                    log.write({"step": state.step, "epoch": epoch, "loss": float(window_loss),
                               **{k: v.item() for k, v in parts.items()}, "lr": schedule.get_last_lr()[0]})
                window_loss = torch.zeros((), device=device)
                if state.step == total:
                    break
                if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                    checkpoint(train_time=elapsed)
                tick = time.perf_counter()
            state.train_time += time.perf_counter() - epoch_start
        pool_skipped()
        record = _end_of_epoch(cfg, method, state, net, num_classes, accelerator)
        state.epoch, state.batch, state.epoch_loss, state.epoch_steps = epoch + 1, 0, 0.0, 0
        log.write(record)
        checkpoint()
    results = {"steps": state.step, "train_samples_per_s": round(state.samples / max(state.train_time, 1e-9), 1),
               "data_wait_share": round(state.wait_time / max(state.train_time, 1e-9), 3),
               "bad_samples": skipped_summary(state.skipped)}
    if world > 1:
        results["replica_max_abs_diff"] = _replica_divergence(model, accelerator)
    net.eval()
    if cfg.select == "best_val":  # every rank takes the weights of the best validation epoch
        state.best_val, state.best_epoch = broadcast_object_list([(state.best_val, state.best_epoch)])[0]
        accelerator.wait_for_everyone()
        net.load_state_dict(torch.load(best_path(cfg.out), map_location=device, weights_only=True))
        results.update(selected_epoch=state.best_epoch, selected_val_top1=state.best_val)
    if accelerator.is_main_process:
        save_model(Path(cfg.out) / "model.pt", net, {"view": cfg.view.to_dict(), "method": cfg.method,
                                                      "seed": cfg.seed, "view_seed": seed})
    results.update(final_evaluation(net, cfg, device, accelerator=accelerator))
    return results


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """AdamW, or SGD with (Nesterov) momentum as the official OGM-GE, MMPareto, PMR and MLA code; weight decay
    decoupled in AdamW, added to the gradient (L2) in SGD, as torch's and those codes' optimisers do."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _end_of_epoch(cfg: TrainConfig, method: Method, state: LoopState, net: LateFusionNet,
                  num_classes: int, accelerator: Accelerator) -> dict:
    """The epoch's record: train loss, throughput, validation accuracy (and probes); the best-val
    weights; the method's own end-of-epoch update."""
    record = {"epoch": state.epoch, "step": state.step,
              "train_loss": state.epoch_loss / max(state.epoch_steps, 1),
              "samples_per_s": round(state.samples / state.train_time, 1),
              "data_wait_share": round(state.wait_time / state.train_time, 3),
              "bad_samples": skipped_summary(state.skipped, state.epoch)["per_shard"]}
    net.eval()  # every rank evaluates its share of the split
    device = accelerator.device
    val = evaluate_split(cfg, net, "val", device, accelerator)
    scores = accuracies(val["logits"], val["labels"])
    record.update(val_top1=scores["top1"], val_top5=scores["top5"], val_per_class_top1=scores["per_class_top1"])
    if cfg.probe_every and (state.epoch + 1) % cfg.probe_every == 0:
        train_feats = evaluate_split(cfg, net, "train", device, accelerator)
        if accelerator.is_main_process:
            record["val_probe"] = {m: linear_probe(train_feats["features"][m], train_feats["labels"],
                                                   val["features"][m], val["labels"], num_classes)
                                   for m in cfg.modalities}
    if accelerator.is_main_process and cfg.select == "best_val" and \
            (state.best_val is None or record["val_top1"] > state.best_val):
        state.best_val, state.best_epoch = record["val_top1"], state.epoch
        best_path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), best_path(cfg.out))
    net.train()
    record.update(method.end_of_epoch(net, val, accelerator))
    accelerator.wait_for_everyone()
    return record


def _warn_skipped(skipped: list[Skipped], epoch: int) -> list[tuple[int, Skipped]]:
    """Name each damaged sample the loader replaced; returns them tagged with the epoch."""
    for sample in skipped:
        tqdm.write(f"umt-train: warning: skipped damaged sample {sample} (another sample of its batch took its place)")
    return [(epoch, sample) for sample in skipped]


def skipped_summary(skipped: list[tuple[int, Skipped]], epoch: int | None = None) -> dict:
    """Damaged samples met (in one epoch, or in all): how many per shard, and each named once with its reason."""
    met = [sample for e, sample in skipped if epoch is None or e == epoch]
    per_shard: dict[str, int] = {}
    for sample in met:
        name = sample.shard.rsplit("/", 1)[-1]
        per_shard[name] = per_shard.get(name, 0) + 1
    return {"skipped": len(met), "per_shard": dict(sorted(per_shard.items())),
            "samples": sorted({f"{s.shard.rsplit('/', 1)[-1]} {s.key}: {s.reason}" for s in met})}


def best_path(out: str) -> Path:
    """The weights of the best validation epoch so far (with `select: best_val`)."""
    return Path(out) / "checkpoints" / "best_val.pt"


def _replica_divergence(model: torch.nn.Module, accelerator: Accelerator) -> float:
    """Largest parameter difference between any rank and rank 0: 0.0 unless DDP lost sync."""
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])[None]
    replicas = accelerator.gather(flat)
    return (replicas - replicas[0]).abs().max().item()
