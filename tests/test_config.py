from pathlib import Path

import pytest

from umt.engine.cli import main as train_main, parse_args
from umt.engine.config import ConfigError
from umt.engine.config_files import load

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load_and_validate(name):
    cfg = load(str(CONFIGS / name), ["method.name=umt", "umt.cache=x.zarr"])
    cfg.validate()
    assert cfg.distill_weight == 10.0 and len(cfg.modalities) == 2


def test_overrides_and_errors(tmp_path):
    cfg = load(str(CONFIGS / "kinetics400.yaml"), ["optim.lr=1e-2", "data.view.crop=112", "run.out=r"])
    assert cfg.lr == 0.01 and cfg.view.crop == 112 and cfg.view.frames == 8 and cfg.out == "r"
    with pytest.raises(ConfigError, match="unknown key 'optim.learning_rate'"):
        load(str(CONFIGS / "kinetics400.yaml"), ["optim.learning_rate=1"])
    cfg = load(str(CONFIGS / "kinetics400.yaml"), ["optim.name=sgd", "optim.momentum=0.8", "optim.nesterov=true"])
    assert (cfg.optimizer, cfg.momentum, cfg.nesterov) == ("sgd", 0.8, True)
    assert parse_args(["--data", "d", "--out", "o", "--optim", "sgd", "--nesterov"]).optimizer == "sgd"
    with pytest.raises(ConfigError, match="optimizer must be one of adamw, sgd; got 'adam'"):
        load(str(CONFIGS / "kinetics400.yaml"), ["optim.name=adam"]).validate()
    with pytest.raises(ConfigError, match="optim.epochs must be int, got 'many'"):
        load(str(CONFIGS / "kinetics400.yaml"), ["optim.epochs=many"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  widht: 8\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown key 'model.widht'"):
        load(str(bad), ["data.path=d", "run.out=o"])
    with pytest.raises(ConfigError, match="not both"):
        parse_args(["--config", str(bad), "--lr", "0.1"])


def test_config_run_saves_the_resolved_config(data, tmp_path):
    out = tmp_path / "run"
    train_main(["--config", str(CONFIGS / "synth-demo.yaml"), f"data.path={data}", f"run.out={out}",
                "optim.max_steps=2", "run.probe=false", "model.width=4", "optim.batch_size=8", "data.workers=0",
                "data.view={frames: 3, stride: 2, crop: 16, audio_seconds: 0.25, mel_bins: 16}"])
    resolved = load(str(out / "config.yaml"), [])
    assert resolved.max_steps == 2 and resolved.width == 4 and resolved.fusion == "mlp" and resolved.view.crop == 16


def test_demo_config_file_matches_the_demo():
    from umt.engine.demo import VIEW
    cfg = load(str(CONFIGS / "synth-demo.yaml"), [])
    assert (cfg.view, cfg.width, cfg.fusion, cfg.epochs, cfg.batch_size) == (VIEW, 8, "mlp", 6, 32)
