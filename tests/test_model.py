import pytest
import torch

from phototag.checkpoint import load_model, read_checkpoint, save_checkpoint
from phototag.model import MultiHeadTagger, PretrainedWeightsUnavailable, build_model
from phototag.taxonomy import Taxonomy

TAXONOMY = Taxonomy.load()


def test_output_has_one_logit_per_taxonomy_slot():
    model = build_model(TAXONOMY, arch="resnet34").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, TAXONOMY.num_logits)
    assert list(model.heads) == [g.name for g in TAXONOMY.groups]


def test_checkpoint_round_trip_is_exact_and_weights_only(tmp_path):
    model = build_model(TAXONOMY, arch="resnet18", image_size=96).eval()
    tuned = TAXONOMY.with_thresholds({"hugs": 0.35})
    save_checkpoint(tmp_path / "m.pt", model, tuned, args={"epochs": 1, "data": "x.csv"}, epoch=1)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)  # plain data only: no pickled objects
    assert payload["args"]["data"] == "x.csv"
    loaded, taxonomy, _ = load_model(tmp_path / "m.pt")
    assert taxonomy.thresholds()["hugs"] == 0.35
    assert loaded.config.image_size == 96 and loaded.config.arch == "resnet18"
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_taxonomy_that_disagrees_with_the_model_is_refused(tmp_path):
    model = build_model(TAXONOMY, arch="resnet18")
    save_checkpoint(tmp_path / "m.pt", model, TAXONOMY)
    data = TAXONOMY.to_dict()
    data["groups"][3]["classes"] = data["groups"][3]["classes"][:4]
    with pytest.raises(ValueError, match="16 logits"):
        load_model(tmp_path / "m.pt", taxonomy=Taxonomy.from_dict(data))


def test_non_checkpoint_file_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a tagger checkpoint"):
        read_checkpoint(tmp_path / "other.pt")


def test_imagenet_weights_load_from_the_torch_hub_cache(tmp_path, monkeypatch):
    """The real torchvision weights API path, fed from a cache file this test writes (nothing is downloaded)."""
    from torchvision.models import ResNet18_Weights, resnet18

    reference = resnet18()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = build_model(TAXONOMY, weights="imagenet", arch="resnet18")
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)


def test_missing_imagenet_weights_give_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torch.hub

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(PretrainedWeightsUnavailable, match="--weights none"):
        MultiHeadTagger(build_model(TAXONOMY, arch="resnet18").config, pretrained=True)
