from pathlib import Path

import pytest

from umt.engine.cli import main as train_main, parse_args
from umt.engine.config import ConfigError
from umt.engine.config_files import load
from umt.loaders.errors import UserError

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
    with pytest.raises(ConfigError, match="optim.epochs must be int, got 'many'"):
        load(str(CONFIGS / "kinetics400.yaml"), ["optim.epochs=many"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  widht: 8\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown key 'model.widht'"):
        load(str(bad), ["data.path=d", "run.out=o"])
    with pytest.raises(ConfigError, match="not both"):
        parse_args(["--config", str(bad), "--lr", "0.1"])


def test_test_protocol_and_crop_mode_settings():
    cfg = load(str(CONFIGS / "kinetics400.yaml"), ["data.view.crop_mode=cut", "data.test_clips=4"])
    assert (cfg.test_clips, cfg.test_crops, cfg.view.crop_mode) == (4, 3, "cut")   # 10 x 3 in the file
    flags = parse_args(["--data", "d", "--out", "o", "--test-clips", "10", "--test-crops", "3", "--min-area", "0.3"])
    assert (flags.test_clips, flags.test_crops, flags.view.min_area, flags.view.crop_mode) == (10, 3, 0.3, "resized")
    with pytest.raises(ConfigError, match="test clips must be in 1..64 and test crops in 1..8, got 10 and 9"):
        parse_args(["--data", "d", "--out", "o", "--test-clips", "10", "--test-crops", "9"]).validate()
    with pytest.raises(UserError, match="view crop mode must be one of resized, cut, got 'squash'"):
        load(str(CONFIGS / "kinetics400.yaml"), ["data.view.crop_mode=squash"])


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
