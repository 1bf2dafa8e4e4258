from pathlib import Path

import pytest
import yaml

from umt.engine.checkpoint import save_model
from umt.engine.cli import main as train_main, parse_args, parse_run
from umt.engine.config import ConfigError
from umt.engine.config_files import load
from umt.engine.models import LateFusionNet, ModelConfig
from umt.loaders.errors import UserError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# The one shipped config that pins a fusion head: make demo's MLP (its paired cue needs one); every other
# config leaves the head to the method, so that any method trains from it.
PINS_FUSION = {"synth-demo.yaml": "mlp"}


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load_and_validate(name):
    cfg = load(str(CONFIGS / name), ["method.name=umt", "umt.cache=x.zarr"])
    cfg.validate()
    assert cfg.distill_weight == 10.0 and len(cfg.modalities) == 2


def test_overrides_and_errors(tmp_path):
    cfg = load(str(CONFIGS / "kinetics400.yaml"), ["optim.adamw.lr=1e-2", "data.view.crop=112", "run.out=r"])
    assert cfg.lr == 0.01 and cfg.view.crop == 112 and cfg.view.frames == 8 and cfg.out == "r"
    with pytest.raises(ConfigError, match="'optim.lr' is now set per optimiser: optim.adamw.lr or optim.sgd.lr"):
        load(str(CONFIGS / "kinetics400.yaml"), ["optim.lr=1e-2"])
    with pytest.raises(ConfigError, match="unknown key 'optim.learning_rate'"):
        load(str(CONFIGS / "kinetics400.yaml"), ["optim.learning_rate=1"])
    cfg = load(str(CONFIGS / "kinetics400.yaml"), ["optim.name=sgd", "optim.sgd.momentum=0.8", "optim.sgd.nesterov=true"])
    assert (cfg.optimizer, cfg.momentum, cfg.nesterov, cfg.lr, cfg.weight_decay) == ("sgd", 0.8, True, 1e-3, 1e-4)
    cfg = load(str(CONFIGS / "kinetics400.yaml"), ["optim.sgd.momentum=0.8", "optim.sgd.lr=0.5"])  # joint: AdamW's
    assert (cfg.optimizer, cfg.momentum, cfg.lr, cfg.weight_decay) == (None, 0.9, 1e-3, 0.01)
    assert parse_args(["--data", "d", "--out", "o", "--optim", "sgd", "--nesterov"]).optimizer == "sgd"
    with pytest.raises(ConfigError, match="optimizer must be one of adamw, sgd; got 'adam'"):
        load(str(CONFIGS / "kinetics400.yaml"), ["optim.name=adam"]).validate()
    with pytest.raises(ConfigError, match="optim.epochs must be int, got 'many'"):
        load(str(CONFIGS / "kinetics400.yaml"), ["optim.epochs=many"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  widht: 8\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown key 'model.widht'"):
        load(str(bad), ["data.path=d", "run.out=o"])
    with pytest.raises(ConfigError, match="bad.yaml: unknown key 'model.widht'"):
        parse_args(["--config", str(bad), "--lr", "0.1"])


def test_flags_beside_a_config_override_it_as_a_loop_over_methods_gives_them():
    """`umt-train --config F --method $m --epochs 1 run.out=runs/$m`: the flags win over the file and its overrides,
    and the optimiser block read is the flag-chosen method's (mla trains with SGD: the file's sgd.lr)."""
    realav = str(CONFIGS / "realav.yaml")
    cfg, ignored = parse_run(["--config", realav, "--method", "mla", "--epochs", "1", "run.out=runs/mla",
                              "optim.epochs=4", "--crop", "32"])
    assert (cfg.method, cfg.epochs, cfg.out, cfg.view.crop, cfg.view.frames) == ("mla", 1, "runs/mla", 32, 4)
    assert (cfg.optimizer, cfg.lr, cfg.momentum) == (None, 0.0125, 0.9) and ignored == []
    cfg, _ = parse_run(["--config", realav, "--method", "ogm-ge", "--lr", "0.05", "run.out=o"])
    assert (cfg.method, cfg.lr, cfg.data) == ("ogm-ge", 0.05, "data/realav")
    cfg, _ = parse_run(["--config", realav, "--epochs", "10", "optim.epochs=3"])  # a flag equal to its default counts
    assert cfg.epochs == 10
    _, ignored = parse_run(["--config", realav, "--method", "joint", "--ogm-alpha", "0.3"])
    assert ignored == ["--method joint does not read --ogm-alpha (read by ogm-ge); ignored"]
    with pytest.raises(ConfigError, match="KEY=VALUE overrides need --config"):
        parse_args(["--data", "d", "--out", "o", "optim.epochs=3"])


def test_test_protocol_and_crop_mode_settings():
    cfg = load(str(CONFIGS / "kinetics400.yaml"), ["data.view.crop_mode=cut", "data.test_clips=4"])
    assert (cfg.test_clips, cfg.test_crops, cfg.view.crop_mode) == (4, 3, "cut")   # 10 x 3 in the file
    flags = parse_args(["--data", "d", "--out", "o", "--test-clips", "10", "--test-crops", "3", "--min-area", "0.3"])
    assert (flags.test_clips, flags.test_crops, flags.view.min_area, flags.view.crop_mode) == (10, 3, 0.3, "resized")
    with pytest.raises(ConfigError, match="test clips must be in 1..64 and test crops in 1..8, got 10 and 9"):
        parse_args(["--data", "d", "--out", "o", "--test-clips", "10", "--test-crops", "9"]).validate()
    with pytest.raises(UserError, match="view crop mode must be one of resized, cut, jitter, got 'squash'"):
        load(str(CONFIGS / "kinetics400.yaml"), ["data.view.crop_mode=squash"])


def test_config_run_saves_the_resolved_config(data, tmp_path):
    out = tmp_path / "run"
    train_main(["--config", str(CONFIGS / "synth-demo.yaml"), f"data.path={data}", f"run.out={out}",
                "optim.max_steps=2", "run.probe=false", "--width", "4", "optim.batch_size=8", "data.workers=0",
                "data.view={frames: 3, stride: 2, crop: 16, audio_seconds: 0.25, mel_bins: 16}"])
    resolved = load(str(out / "config.yaml"), [])
    assert resolved.max_steps == 2 and resolved.width == 4 and resolved.fusion == "mlp" and resolved.view.crop == 16


def test_demo_config_file_matches_the_demo():
    from umt.cache.demo import VIEW
    cfg = load(str(CONFIGS / "synth-demo.yaml"), [])
    assert (cfg.view, cfg.width, cfg.fusion, cfg.epochs, cfg.batch_size) == (VIEW, 8, "mlp", 6, 32)


def test_flags_the_method_does_not_read_are_ignored_with_a_warning(tmp_path):
    base = ["--data", "d", "--out", "o"]
    members = ["--member=video=v.pt", "--member=audio=a.pt"]
    cfg, ignored = parse_run([*base, "--method", "ume", *members, "--epochs", "3", "--lr", "0.1", "--fusion", "mlp"])
    assert ignored == [f"--method ume does not read {flag} (read by the trainable methods); ignored"
                       for flag in ("--epochs", "--lr", "--fusion")]
    _, ignored = parse_run([*base, "--method", "ume", *members, "--epochs", "10"])   # typed, though the default
    assert ignored == ["--method ume does not read --epochs (read by the trainable methods); ignored"]
    _, ignored = parse_run([*base, "--method", "joint", "--epochs", "2", "--lambda", "3", "--no-ogm-ge"])
    assert ignored == ["--method joint does not read --lambda (read by umt); ignored",
                       "--method joint does not read --no-ogm-ge (read by ogm-ge); ignored"]
    assert parse_run([*base, "--method", "gblend", "--dropout-p", "0.2"])[1] == \
        ["--method gblend does not read --dropout-p (read by dropout); ignored"]
    # what each method reads passes: UME's evaluation settings and its own, a method's own section
    cfg, ignored = parse_run([*base, "--method", "ume", *members, "--batch-size", "8", "--workers", "0",
                              "--crop", "16", "--ume-combine", "probs", "--no-probe"])
    assert (cfg.batch_size, cfg.view.crop, cfg.ume_combine, cfg.probe, ignored) == (8, 16, "probs", False, [])
    cfg, ignored = parse_run([*base, "--method", "ogm-ge", "--ogm-alpha", "0.8", "--epochs", "2", "--fusion", "mlp"])
    assert (cfg.ogm_alpha, cfg.epochs, cfg.fusion, ignored) == (0.8, 2, "mlp", [])
    assert parse_args([*base, "--method", "umt", "--lambda", "3", "--teacher=video=v.pt"]).distill_weight == 3.0


def test_ume_takes_flags_equal_to_its_members_and_refuses_conflicting_ones(tmp_path):
    """A loop over methods with shared flags: UME's --modality and --width, equal to its members', pass silently."""
    paths = {}
    for m in ("video", "audio"):
        paths[m] = tmp_path / f"{m}.pt"
        save_model(paths[m], LateFusionNet(ModelConfig((m,), 3, width=4)))
    shared = ["--data", "d", "--out", "o", "--method", "ume", *[f"--member={m}={p}" for m, p in paths.items()]]
    assert parse_run([*shared, "--modality", "video", "--modality", "audio", "--width", "4"])[1] == []
    with pytest.raises(ConfigError, match=r"^--method ume uses its members' width, 4, not --width 8"):
        parse_run([*shared, "--width", "8"])
    with pytest.raises(ConfigError, match=r"^--method ume uses its members' modalities, \['audio', 'video'\], "
                                          r"not --modality \['video'\]"):
        parse_run([*shared, "--modality", "video"])


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_method_trains_from_every_shipped_config(name):
    """`umt-train --config configs/NAME method.name=M` passes M's check, resolved as the trainer resolves it
    (engine/train.py `run`: validate, then the method's fusion and optimiser, then its check), for every
    registered method and either optimiser; the run takes lr and weight decay from its optimiser's block."""
    from umt.engine.methods import REGISTRY, method_for, resolved
    text = yaml.safe_load((CONFIGS / name).read_text())
    needs = {"unimodal": [f"model.modalities=[{text['model']['modalities'][0]}]"],  # what the method needs anyway
             "umt": ["umt.cache=x.zarr"]}
    for method, cls in REGISTRY.items():
        for optimiser in ("null", "adamw", "sgd"):
            argv = ["--config", str(CONFIGS / name), f"method.name={method}", f"optim.name={optimiser}",
                    *needs.get(method, [])]
            cfg = parse_args(argv)
            cfg.validate()
            if PINS_FUSION.get(name) in (None, *cls.fusions):
                method_for(cfg)
            else:  # synth-demo's MLP head: refused with the remedy, which then passes
                with pytest.raises(ConfigError, match="or name none"):
                    method_for(cfg)
                method_for(parse_args([*argv, "model.fusion=null"]))
            block = text["optim"][resolved(cfg).optimizer]
            assert (cfg.lr, cfg.weight_decay) == (block["lr"], block["weight_decay"]), (method, optimiser)
    assert text["model"].get("fusion") == PINS_FUSION.get(name)


def _other_value(setting):
    """A value of `setting` other than its default, as a flag's argument and as a YAML value (None: a switch)."""
    kind = setting.base_type
    if kind is bool:
        return None, str(not setting.default).lower(), not setting.default
    if setting.choices:
        value = next(c for c in setting.choices if c != setting.default)
        return value, f"'{value}'", value  # quoted: YAML reads a bare `no` (precision) as false
    if setting.type == tuple[str, ...]:
        return "video", "[video]", ("video",)
    if setting.type == dict[str, str]:
        return "video=v.pt", "{video: v.pt}", {"video": "v.pt"}
    value = {int: 7, float: 0.25, str: "x"}[kind]
    return str(value), str(value), value


def test_each_setting_is_one_flag_and_one_yaml_key_and_a_methods_own_is_read_by_it_alone():
    """The CLI, the YAML sections and who reads what all come from each setting's declaration (engine/options.py):
    the shared ones' in engine/config.py, each method's in its module."""
    from umt.engine.config import SHARED_SETTINGS
    from umt.engine.config_files import settings_read
    from umt.engine.methods import METHODS, SETTINGS
    flagged = [s for s in (*SHARED_SETTINGS, *SETTINGS) if s.flag]
    assert len({s.attr for s in flagged}) == len({s.flag for s in flagged}) == len(flagged)
    for s in flagged:
        if s.attr in ("data", "out", "method"):
            continue
        arg, text, value = _other_value(s)
        method = s.method or "joint"
        cfg, ignored = parse_run(["--data", "d", "--out", "o", "--method", method, s.flag, *([arg] if arg else [])])
        assert (getattr(cfg, s.attr), ignored) == (value, []), s.flag
        key = f"{s.section}.{s.key}" if s.key else f"optim.sgd.{s.attr}"  # an optimiser's: in its block
        assert getattr(load(None, ["data.path=d", "run.out=o", "optim.name=sgd", f"{key}={text}"]), s.attr) == value
        if s.method:
            assert [m for m in METHODS if s.attr in settings_read(m)] == [s.method]


def test_the_methods_tables_of_the_docs_are_generated_from_the_registry():
    from umt.engine.method_docs import DOC, rewritten
    assert DOC.read_text() == rewritten(DOC.read_text()), "run: python -m umt.engine.method_docs"
