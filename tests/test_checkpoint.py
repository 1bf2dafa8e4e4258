"""load_model builds a checkpoint's model on the meta device and takes the saved tensors: it must give back the
model that was saved, with nothing left uninitialised, for every head the engine builds."""
import pytest
import torch

import umt.engine.methods  # noqa: F401  (the methods' model parts: greedy's MMTM, ReconBoost's rate, ...)
from umt.engine.checkpoint import CheckpointError, load_model, save_model
from umt.engine.models import LateFusionNet, ModelConfig

CONFIGS = [dict(modalities=("video", "audio")), dict(modalities=("video", "audio"), fusion="mlp", projector=("video",)),
           dict(modalities=("video", "audio"), aux_heads=True, cosine_scale=10.0),
           dict(modalities=("video", "audio"), fusion="shared", boost_rate=1.0, shared_mlp=True),
           dict(modalities=("video", "audio"), mmtm=True, logit_map=True), dict(modalities=("video",))]


@pytest.mark.parametrize("config", CONFIGS)
def test_a_loaded_model_is_the_saved_one(tmp_path, config):
    torch.manual_seed(0)
    saved = LateFusionNet(ModelConfig(num_classes=3, width=2, **config)).eval()
    save_model(tmp_path / "m.pt", saved)
    loaded, _ = load_model(tmp_path / "m.pt")
    tensors = [*loaded.parameters(), *loaded.buffers()]
    assert tensors and not any(t.is_meta for t in tensors)
    assert loaded.state_dict().keys() == saved.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in saved.state_dict().items())
    batch = {"video": torch.randint(0, 256, (2, 2, 16, 16, 3), dtype=torch.uint8), "audio": torch.randn(2, 1, 16, 20)}
    inputs = {m: batch[m] for m in config["modalities"]}
    with torch.no_grad():
        (logits, feats), (logits_saved, feats_saved) = loaded.eval()(inputs), saved(inputs)
    assert torch.equal(logits, logits_saved) and all(torch.equal(feats[m], feats_saved[m]) for m in inputs)


def test_a_checkpoint_missing_a_weight_is_refused_by_name(tmp_path):
    save_model(tmp_path / "m.pt", LateFusionNet(ModelConfig(modalities=("audio",), num_classes=3, width=2)))
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    del ckpt["state_dict"][next(iter(ckpt["state_dict"]))]
    torch.save(ckpt, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="m.pt does not fit"):
        load_model(tmp_path / "m.pt")
