import pytest
import torch

from phototag.checkpoint import FORMAT_VERSION, load_model, read_checkpoint, save_checkpoint
from phototag.model import GeM, MultiHeadTagger, PretrainedWeightsUnavailable, build_model
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


@pytest.mark.parametrize("pooling", ["avg", "max", "gem"])
def test_object_heads_read_their_pooling_and_scene_heads_the_average(pooling):
    model = build_model(TAXONOMY, arch="resnet18", object_pooling=pooling).eval()
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        fmap = model.feature_map(images)
        logits = model(images)
        average = fmap.mean(dim=(2, 3))
        objects = {"avg": average, "max": fmap.amax(dim=(2, 3)),
                   "gem": fmap.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)}[pooling]
        expected = torch.cat([head(objects if name == "objects" else average) for name, head in model.heads.items()],
                             dim=1)
    assert model.config.object_heads == ("objects",)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert ("object_pool.p" in model.state_dict()) == (pooling == "gem")


def test_gem_lies_between_the_average_and_the_maximum():
    fmap = torch.rand(3, 8, 4, 4)
    fmap[:, :, 0, 0] = 5.0  # one strong cell: the small object the average dilutes
    gem = GeM()(fmap)
    assert torch.all(fmap.mean(dim=(2, 3)) < gem) and torch.all(gem < fmap.amax(dim=(2, 3)))


def _as_format_1(path):
    """Rewrite a checkpoint the way the code before `resize` and `object_pooling` wrote it."""
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 1
    for key in ("resize", "object_pooling", "object_heads"):
        del payload["model_config"][key]
    torch.save(payload, path)


def test_a_checkpoint_from_before_resize_and_pooling_loads_as_trained(tmp_path):
    """Format-1 checkpoints were trained on squashed photos with averaged features: they load that way."""
    old = build_model(TAXONOMY, arch="resnet18", object_pooling="avg").eval()
    save_checkpoint(tmp_path / "old.pt", old, TAXONOMY)
    _as_format_1(tmp_path / "old.pt")
    loaded, _, _ = load_model(tmp_path / "old.pt")
    assert (loaded.config.resize, loaded.config.object_pooling) == ("squash", "avg")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # torchvision's own forward (average pooling) through the same weights
        features = loaded.backbone(x)
        expected = torch.cat([head(features) for head in loaded.heads.values()], dim=1)
        assert torch.allclose(loaded(x), expected, atol=1e-5)


def test_a_checkpoint_from_a_newer_format_is_refused_by_name(tmp_path):
    model = build_model(TAXONOMY, arch="resnet18")
    save_checkpoint(tmp_path / "m.pt", model, TAXONOMY)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match=f"format {FORMAT_VERSION + 1}; this code reads formats up to"):
        load_model(tmp_path / "newer.pt")
    payload["format_version"] = FORMAT_VERSION
    payload["model_config"]["crop"] = "centre"
    torch.save(payload, tmp_path / "unknown.pt")
    with pytest.raises(ValueError, match=r"does not know: \['crop'\]"):
        load_model(tmp_path / "unknown.pt")


def test_bad_resize_or_pooling_is_refused():
    with pytest.raises(ValueError, match="resize must be one of"):
        build_model(TAXONOMY, arch="resnet18", resize="crop")
    with pytest.raises(ValueError, match="object_pooling must be one of"):
        build_model(TAXONOMY, arch="resnet18", object_pooling="sum")
