"""`umt-train`: train a uni-modal, joint or UMT model, or evaluate a UME, into a run directory.

Single process: `umt-train ...`. Several processes or GPUs: `accelerate launch [...] -m umt.engine.cli ...`.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any

from umt.loaders.errors import parse_assignments, run_cli
from umt.loaders.stored.views import ViewSpec

from . import config_files
from .config import CHOICES, ConfigError, TrainConfig

def _epilog() -> str:
    from .methods import REGISTRY  # one line per method, from the method classes
    lines = [f"  {name:<9} {cls.summary}" for name, cls in REGISTRY.items()]
    lines.append("  ume       evaluation only (never trains): average the logits of uni-modal --member checkpoints")
    return "methods:\n" + "\n".join(lines) + "\n\n" + EXAMPLES


EXAMPLES = """examples:
  umt-train --data data/synth --method unimodal --modality video --out runs/video
  umt-train --data data/synth --method umt --cache runs/cache.zarr --out runs/umt
  umt-train --config configs/kinetics400.yaml method.name=umt umt.cache=k400.zarr run.out=runs/k400-umt
"""


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The run configuration of a command line (flags the method does not read dropped: `parse_run`)."""
    return parse_run(argv)[0]


def parse_run(argv: list[str] | None = None) -> tuple[TrainConfig, list[str]]:
    """The run configuration, and a warning for each given flag the method does not read."""
    p = argparse.ArgumentParser(prog="umt-train", description="Train multi-modal classifiers with UMT, UME and "
                                "their baselines; writes config.yaml, metrics.jsonl, model.pt, results.json "
                                "and report.md to --out.", epilog=_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TrainConfig(data="", out="")
    p.add_argument("--config", help="YAML config (see configs/); then set anything else as KEY=VALUE overrides")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="with --config: dotted overrides, e.g. "
                   "optim.adamw.lr=0.01 run.out=runs/x")
    p.add_argument("--data", help="shard directory (umt-data synth / pack)")
    p.add_argument("--out", help="run directory")
    p.add_argument("--method", choices=CHOICES["method"], default=d.method)
    p.add_argument("--modality", action="append", help="modality to use, repeatable (default: video and audio)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process (evaluation always; training "
                   "unless --global-batch is set)")
    p.add_argument("--global-batch", type=int, help="training samples per micro-batch over all processes, each "
                   "taking global / processes: the run can then resume on another number of processes")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimiser step (windows "
                   "stay inside an epoch; the effective batch is batch size x grad accum x processes)")
    p.add_argument("--precision", choices=CHOICES["precision"], default=d.precision,
                   help="mixed precision (auto: bf16 on GPU, fp32 on CPU)")
    from .methods import ADAMW_LR, REGISTRY, SGD_LR_PER_64  # the methods' own choices, from the method classes
    sgd = [name for name, cls in REGISTRY.items() if cls.optimizer == "sgd"]
    p.add_argument("--optim", dest="optimizer", choices=CHOICES["optimizer"], help="optimiser (default: the one "
                   f"of the method's official code: sgd for {', '.join(sgd)}; adamw for the others)")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--nesterov", action="store_true", help="SGD with Nesterov momentum")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate, cosine decay (default: AdamW "
                   f"{ADAMW_LR:g}; SGD {SGD_LR_PER_64:g} per 64 samples of an optimiser step's batch, the linear "
                   "scaling rule's 0.1 per 256, the batch being the global batch (batch size x processes without "
                   "--global-batch) times --grad-accum; every method alike, as the authors' own rates — reconboost "
                   "and lfm 0.01, mmpareto and relearning 2e-3, ogm-ge, mla and mmcosine 1e-3, pmr 1e-4 — come "
                   "with 70-800 epochs of step decay and barely train in a few epochs)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--width", type=int, default=d.width, help="ResNet-18 base width; features are 8x this "
                   "(64 gives the paper's 512-d)")
    own_head = ", ".join(f"{name}: {cls.fusions[0]}" for name, cls in REGISTRY.items() if cls.fusions[0] != "linear")
    p.add_argument("--fusion", choices=CHOICES["fusion"], help="fusion head (default: the method's; linear but "
                   f"{own_head}): linear or "
                   "mlp on the concatenated features (linear: the paper's; mlp can read paired cues), sum of "
                   "per-modality linear heads' logits, or shared: one linear head for every modality, their "
                   "logits weighted per sample by exp(-entropy) (MLA's; needs equal feature dims)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--view-seed", type=int, help="seed of the augmented views (default: --seed, or the cache's)")
    p.add_argument("--num-views", type=int, help="train on views 0..V-1 only (default: fresh views each "
                   "epoch, or the cache's V)")
    p.add_argument("--test-clips", type=int, default=d.test_clips, help="test protocol: T temporal windows per "
                   "sample, evenly spaced from the clip's start to its end (audio windows aligned), logits "
                   "averaged over T x C views (Kinetics literature: 10 x 3; default one centre view)")
    p.add_argument("--test-crops", type=int, default=d.test_crops, help="test protocol: C spatial crops per "
                   "window, along the frame's long side (3: left/centre/right; 1: centre)")
    p.add_argument("--select", choices=CHOICES["select"], default=d.select,
                   help="final model: the last epoch's, or the epoch with the best validation top-1 (early stopping "
                        "without stopping; every method alike)")
    p.add_argument("--backend", choices=CHOICES["backend"], default=d.backend,
                   help="training-loader decoding of video/audio: cpu (PyAV workers), dali (NVDEC on the GPU; "
                        "not yet run on a GPU: README, Status), auto (dali when a GPU and DALI are present)")
    p.add_argument("--finish", choices=CHOICES["finish"], default=d.finish,
                   help="cpu backend: where each view is resized, colour-converted and turned into a log-mel: in the "
                        "decoding workers (CPU), or on the training device, batched (the workers only decode: at "
                        "224 px / 16 frames / 10 s audio they ship 1.5x the clips a second; same views to the bit, "
                        "log-mels to float rounding; on a CPU it is slow, about 100 ms a view: for checks); auto: "
                        "device when training on a GPU (not yet run on a GPU: README, Status)")
    p.add_argument("--workers", dest="num_workers", type=int, default=d.num_workers, help="decoding processes")
    p.add_argument("--bad-samples", choices=CHOICES["bad_samples"], default=d.bad_samples,
                   help="a training sample that fails to decode: skip (another sample of its batch takes its place, "
                        "so every rank runs the planned batches; each is named in a warning and counted in "
                        "metrics.jsonl, results.json and report.md) or error (stop, naming shard and sample). "
                        "cpu backend; dali, image and vector sets stop at one. Evaluation always stops")
    p.add_argument("--bad-samples-limit", type=int, default=d.bad_samples_limit,
                   help="with skip: stop after this many damaged samples in a row (the data is plainly broken)")
    p.add_argument("--lambda", dest="distill_weight", type=float, default=d.distill_weight, help="UMT weight λ")
    p.add_argument("--cache", help="UMT: teacher-feature cache from `umt-cache build`")
    p.add_argument("--distill", action="append", metavar="MODALITY", help="UMT: distil only these modalities "
                   "(repeatable; default all)")
    p.add_argument("--projector", action="store_true", help="UMT: distil through a learned linear projector, "
                   "MSE(P·f_student, f_teacher) (FitNets)")
    p.add_argument("--distill-targets", choices=CHOICES["distill_targets"], default=d.distill_targets,
                   help="UMT: distil the teachers' features (MSE, the paper's), their logits (T²·KL(teacher ‖ "
                        "student) on per-modality auxiliary heads), or both; from a cache or online teachers")
    p.add_argument("--temperature", dest="logit_temperature", type=float, default=d.logit_temperature,
                   help="UMT logit distillation temperature T")
    p.add_argument("--logit-weight", type=float, default=d.logit_weight, help="UMT: weight of the logit KL term")
    p.add_argument("--ogm-alpha", type=float, default=d.ogm_alpha, help="OGM-GE modulation strength α; k scales "
                   "the conv-weight gradients (MLP encoders of vector views: their Linear weight matrices) and "
                   "GE adds noise of the unmodulated gradient's std to them")
    p.add_argument("--ogm-start", type=int, default=d.ogm_start, help="OGM-GE: first modulated epoch")
    p.add_argument("--ogm-end", type=int, help="OGM-GE: epoch at which modulation stops")
    p.add_argument("--no-ogm-ge", dest="ogm_ge", action="store_false", help="OGM without the GE noise")
    p.add_argument("--pareto-gamma", type=float, default=d.pareto_gamma, help="MMPareto: factor on each encoder's "
                   "combined gradient after its rescaling to the summed gradient's norm")
    p.add_argument("--agm-alpha", type=float, default=d.agm_alpha, help="AGM modulation strength α")
    p.add_argument("--agm-start", type=int, default=d.agm_start, help="AGM: first modulated epoch")
    p.add_argument("--agm-end", type=int, help="AGM: epoch at which modulation stops")
    p.add_argument("--pmr-alpha", type=float, default=d.pmr_alpha, help="PMR: weight α of the weaker modality's "
                   "prototypical cross-entropy")
    p.add_argument("--pmr-momentum", type=float, default=d.pmr_momentum, help="PMR: share of the previous "
                   "prototypes kept at each epoch's update")
    p.add_argument("--pmr-start", type=int, default=d.pmr_start, help="PMR: first rebalanced epoch")
    p.add_argument("--pmr-end", type=int, help="PMR: epoch at which rebalancing stops")
    p.add_argument("--dropout-p", type=float, default=d.dropout_p, help="modality dropout: probability that a "
                   "training sample loses one modality (chosen uniformly; its feature zeroed, not rescaled)")
    p.add_argument("--mla-projection", action="store_true", help="MLA: project the shared head's gradient by "
                   "textbook OWM (the paper's gradient modification; the official code's results had none)")
    p.add_argument("--mmcosine-scale", type=float, default=d.mmcosine_scale, help="MMCosine: scale s of the "
                   "summed per-modality cosine logits (the authors'; BalanceBenchmark: 15)")
    p.add_argument("--opm-alpha", type=float, default=d.opm_alpha, help="OPM: α, growth of the dominant "
                   "modality's drop probability with its lead")
    p.add_argument("--opm-p-exe", type=float, default=d.opm_p_exe, help="OPM: probability that a batch is modulated")
    p.add_argument("--opm-q-base", type=float, default=d.opm_q_base, help="OPM: base drop probability q_base (the "
                   "authors' script's; BalanceBenchmark: 0.4)")
    p.add_argument("--opm-start", type=int, default=d.opm_start, help="OPM: first modulated epoch")
    p.add_argument("--cml-lambda", type=float, default=d.cml_lambda, help="CML: weight λ of the penalty on "
                   "confidence gained by removing modalities")
    p.add_argument("--cml-batch-clamp", action="store_true", help="CML: BalanceBenchmark's penalty, the batch's "
                   "summed confidence gain clamped at 0 (default: the authors', each sample's gain clamped, "
                   "samples whose removal turned a wrong prediction right left out)")
    p.add_argument("--relearn-lambda", type=float, default=d.relearn_lambda, help="Re-learning: λ in the "
                   "re-initialisation strength tanh(λ·|train − val purity|)")
    p.add_argument("--relearn-every", type=int, default=d.relearn_every, help="Re-learning: epochs between "
                   "re-initialisations (default: the authors' 20 of 90 epochs scaled to --epochs, "
                   "max(1, round(20 x epochs / 90)): every 7 of 30; BalanceBenchmark: 15)")
    p.add_argument("--relearn-times", type=int, default=d.relearn_times, help="Re-learning: most "
                   "re-initialisations (the authors' 3; BalanceBenchmark: 2)")
    p.add_argument("--amco-sigma", type=float, default=d.amco_sigma, help="AMCo: share of the softmax mass above "
                   "which a modality counts as depended on (and is masked in the next batch)")
    p.add_argument("--amco-eps", type=float, default=d.amco_eps, help="AMCo: ε of the mask ratio's sine ramp")
    p.add_argument("--amco-score-sum", action="store_true", help="AMCo: evaluate the fused logits Σu, as "
                   "BalanceBenchmark's validation step (default: A(Σu), the map the fused loss trains)")
    p.add_argument("--lfm-lr-alpha", type=float, default=d.lfm_lr_alpha, help="LFM: step size of the per-epoch "
                   "update of the alignment weight (halved every 20 epochs)")
    p.add_argument("--lfm-alpha", type=float, default=d.lfm_alpha, help="LFM: the alignment weight's start "
                   "(the authors'; BalanceBenchmark: 0.05)")
    p.add_argument("--reconboost-alpha", type=float, default=d.reconboost_alpha, help="ReconBoost: weight of "
                   "the official ga term (gradient-free as written)")
    p.add_argument("--reconboost-w1", type=float, default=d.reconboost_w1, help="ReconBoost: weight of the boosted "
                   "learner's own log-likelihood")
    p.add_argument("--reconboost-w2", type=float, default=d.reconboost_w2, help="ReconBoost: weight of the term "
                   "against the other modalities' ensemble")
    p.add_argument("--reconboost-epochs", type=int, default=d.reconboost_epochs, help="ReconBoost: epochs per "
                   "phase (boosting one modality, then global fine-tuning; default the authors' 4, shortened to "
                   "epochs // (2 x modalities) in a shorter run; BalanceBenchmark's 1)")
    p.add_argument("--reconboost-rate", type=float, default=d.reconboost_rate, help="ReconBoost: start of the "
                   "learned rate ρ of the ensemble ρ·Σ h(f_m) (the authors' 1.0; BalanceBenchmark: 0.01)")
    p.add_argument("--reconboost-head", choices=CHOICES["reconboost_head"], default=d.reconboost_head,
                   help="ReconBoost: the shared head h, an MLP D→D/2→C (the authors' 512→256→C, scaled to the "
                        "encoders' width D) or linear (BalanceBenchmark's)")
    p.add_argument("--greedy-epsilon", type=float, default=d.greedy_epsilon, help="Greedy: threshold on |d_BDR|, "
                   "the gap between the modalities' conditional learning speeds, that starts re-balancing")
    p.add_argument("--greedy-window", type=int, default=d.greedy_window, help="Greedy: optimiser steps of each "
                   "re-balancing window")
    p.add_argument("--greedy-start", type=int, default=d.greedy_start, help="Greedy: first epoch (from 0) that "
                   "may re-balance")
    p.add_argument("--valuation-warmup", type=int, default=d.valuation_warmup, help="Modality-valuation: epochs "
                   "of plain joint training before samples are valued and copied")
    p.add_argument("--ume-combine", choices=CHOICES["ume_combine"], default=d.ume_combine, help="UME: average logits or probabilities")
    p.add_argument("--ume-fit-weights", action="store_true", help="UME: fit member weights on the validation split")
    p.add_argument("--cache-budget-gb", type=float, default=d.cache_budget_gb, help="load the cache whole onto "
                   "the training device up to this size; beyond it, stream it shard by shard")
    p.add_argument("--teacher", action="append", default=[], metavar="MODALITY=CKPT",
                   help="UMT: online teacher, or with --cache the teacher to verify the cache against")
    p.add_argument("--member", action="append", default=[], metavar="MODALITY=CKPT", help="UME member")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (each of --grad-accum "
                   "micro-batches)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="optimiser steps between "
                   "training-state checkpoints in OUT/checkpoints/last.pt (default: end of each epoch)")
    p.add_argument("--resume", metavar="latest|PATH", help="continue a killed run: 'latest' resumes OUT's last "
                   "checkpoint (and starts fresh if there is none); the configuration must be the same")
    p.add_argument("--log-every", type=int, default=d.log_every, help="optimiser steps between loss records")
    p.add_argument("--log-with", choices=CHOICES["log_with"], default=d.log_with, help="Accelerate tracker that also "
                   "receives the metrics (default tensorboard, in OUT/tensorboard; metrics.jsonl is always written; "
                   "others need their package installed)")
    p.add_argument("--no-probe", dest="probe", action="store_false", help="skip the final linear probes")
    p.add_argument("--probe-every", type=int, default=d.probe_every, help="also probe each encoder on the "
                   "validation split every N epochs (costs one pass over the training split)")
    for f in fields(ViewSpec):
        kind = {"action": argparse.BooleanOptionalAction} if isinstance(f.default, bool) else {"type": type(f.default)}
        p.add_argument("--" + f.name.replace("_", "-"), default=f.default, **kind,
                       help=f"view: {f.name.replace('_', ' ')} (default {f.default})")
    a = vars(p.parse_args(argv))
    config, overrides = a.pop("config"), a.pop("overrides")
    if config or overrides:
        changed = sorted(k for k, v in a.items() if v != p.get_default(k))
        if changed or not config:
            raise ConfigError("use either --config FILE with KEY=VALUE overrides, or option flags, not both "
                              f"(flags given: {', '.join(changed) or 'none'}; overrides need --config)")
        return config_files.load(config, overrides), []
    if not a["data"] or not a["out"]:
        raise ConfigError("--data and --out are required (or use --config FILE)")
    ignored = _unread(p, a)
    view = ViewSpec(**{f.name: a.pop(f.name) for f in fields(ViewSpec)})
    a["modalities"] = tuple(a.pop("modality") or d.modalities)
    a["teachers"] = parse_assignments(a.pop("teacher"), "--teacher")
    a["members"] = parse_assignments(a.pop("member"), "--member")
    a["distill"] = tuple(a.pop("distill") or ())
    return TrainConfig(view=view, **a), ignored


def main(argv: list[str] | None = None) -> None:
    from .train import run

    def body() -> None:
        cfg, ignored = parse_run(argv)
        for line in ignored:
            print(f"umt-train: warning: {line}", file=sys.stderr)
        results = run(cfg, ignored)
        if results:
            print(f"umt-train: test top-1 {results['test_top1']:.3f}  probes {results['probe']}")

    run_cli("umt-train", body)



def _unread(parser: argparse.ArgumentParser, given: dict) -> list[str]:
    """Flags given that the chosen method does not read (`config_files.settings_read`): one whose value equals what
    the method uses anyway passes (UME's --modality and --width, equal to its members'); one that conflicts with it
    is refused, naming both values; the others are returned as one-line warnings (the run ignores them)."""
    view = {f.name for f in fields(ViewSpec)}
    field = {"modality": "modalities", "teacher": "teachers", "member": "members"}
    method = given["method"]
    read = config_files.settings_read(method)
    unread = [(action.option_strings[0], action.dest, field.get(action.dest, "view" if action.dest in view
                                                                 else action.dest))
              for action in parser._actions if action.option_strings and action.dest in given
              and given[action.dest] != action.default]
    warnings = []
    for flag, dest, name in unread:
        if name in read:
            continue
        uses = _ume_uses(given, name) if method == "ume" else None
        if uses is not None:
            ours = sorted(given[dest]) if isinstance(given[dest], list) else given[dest]
            if ours != uses:
                raise ConfigError(f"--method ume uses its members' {name}, {uses}, not {flag} {ours}: leave it out "
                                  "or give members that match")
            continue
        warnings.append(f"--method {method} does not read {flag} (read by {config_files.reader(name)}); ignored")
    return warnings


def _ume_uses(given: dict, name: str) -> Any:
    """What UME uses for a setting it takes from its --member checkpoints (modalities, width), else None."""
    members = parse_assignments(given["member"], "--member")
    if name == "modalities":
        return sorted(members)
    if name == "width" and members:
        from .checkpoint import load_checkpoint  # torch: only when a width is to be checked
        widths = {load_checkpoint(path)["model_config"]["width"] for path in members.values()}
        return widths.pop() if len(widths) == 1 else sorted(widths)
    return None


if __name__ == "__main__":
    main()
