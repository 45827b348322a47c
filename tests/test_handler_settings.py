"""The handler's typed settings: every shipped model-config parses, and a typo or a wrong kind of value is refused
at worker start with a message naming the key (a real TorchServe worker, for the last part)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from handler.tagger_handler import PhotoTaggerHandler
from phototag.handler_settings import HandlerSettings, HandlerSettingsError
from tests.test_handler import make_context

REPO = Path(__file__).resolve().parent.parent
SHIPPED = [REPO / "handler" / "model-config.yaml", REPO / "handler" / "model-config.naive.yaml",
           REPO / "deploy" / "kserve" / "model-config.gpu.yaml"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_model_config_parses_to_what_it_says(path):
    section = yaml.safe_load(path.read_text())["handler"]
    settings = HandlerSettings.from_section(section)
    assert {key: getattr(settings, key) for key in section} == section


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_batch_delay_is_what_torchserve_applies(path):
    """TorchServe 0.12 reads a model-config maxBatchDelay of 0 as unset and waits its default 100 ms instead
    (ModelManager: `marMaxBatchDelay > 0 ? ... : default`); a lone photo then waits longer than with 50. With
    batchSize 1 (the naive config) no batch is gathered and the delay is never waited."""
    config = yaml.safe_load(path.read_text())
    assert config["batchSize"] == 1 or config["maxBatchDelay"] >= 1


def test_an_empty_section_gets_the_defaults():
    assert HandlerSettings.from_section(None) == HandlerSettings.from_section({}) == HandlerSettings()
    assert HandlerSettings().as_section()["decode_threads"] == HandlerSettings.decode_threads


@pytest.mark.parametrize("section, named", [
    ({"torch_thread": 1}, "unknown key(s) ['torch_thread']"),
    ({"Device": "cpu"}, "unknown key(s) ['Device']"),
    ({"torch_threads": "1"}, "handler.torch_threads must be a whole number >= 0, not '1'"),
    ({"decode_threads": 0}, "handler.decode_threads must be a whole number >= 1, not 0"),
    ({"max_pixels": True}, "handler.max_pixels must be a whole number >= 1, not True"),
    ({"channels_last": "yes"}, "handler.channels_last must be true or false, not 'yes'"),
    ({"precision": "int4"}, "handler.precision must be one of auto, bf16, fp32, int8, not 'int4'"),
    ({"device": "tpu"}, "handler.device must be one of auto, cpu, cuda, not 'tpu'"),
    ({"compile": "fast"}, "handler.compile must be one of false, true, default"),
    ({"compile": 1}, "handler.compile must be one of false, true"),
    ({"jpeg_decoder": "nvjpeg"}, "handler.jpeg_decoder must be one of auto, pil, torchvision, not 'nvjpeg'"),
])
def test_a_wrong_key_or_value_is_refused_by_name(section, named):
    with pytest.raises(HandlerSettingsError) as refused:
        HandlerSettings.from_section(section)
    assert named in str(refused.value)


def test_a_handler_section_that_is_not_a_mapping_is_refused():
    with pytest.raises(HandlerSettingsError, match="must be a mapping, not list"):
        HandlerSettings.from_section(["device", "cpu"])


def test_the_handler_refuses_to_start_with_a_typo_in_its_section(tiny_run):
    """The worker's initialize, with TorchServe's own Context carrying the archive's model-config."""
    handler = PhotoTaggerHandler()
    with pytest.raises(HandlerSettingsError, match=r"unknown key\(s\) \['decode_thread'\]"):
        handler.initialize(make_context(tiny_run, decode_thread=2))
    assert not handler.initialized
    handler.initialize(make_context(tiny_run, decode_threads=2))
    assert handler.initialized and handler.decoder_pool._max_workers == 2
