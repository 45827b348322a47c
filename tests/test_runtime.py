"""Device, precision and memory layout (phototag.inference.Runtime) and the compiled forward pass with padded
batch buckets (phototag.compiled): the settings resolve as documented and change no answer beyond rounding."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from phototag.checkpoint import load_model
from phototag.compiled import BucketedCompiledModel, batch_buckets
from phototag.handler_settings import HandlerSettings
from phototag.inference import Runtime, native_bf16, predict_logits, prepare_model


def test_auto_precision_follows_the_hardware():
    cpu = torch.device("cpu")
    assert Runtime.resolve(cpu, "auto").bf16 == native_bf16(cpu)
    assert Runtime.resolve(cpu, "fp32").bf16 is False
    assert Runtime.resolve(cpu, "bf16").bf16 is True
    with pytest.raises(ValueError, match="precision must be one of"):
        Runtime.resolve(cpu, "fp16")


def test_handler_settings_resolve_to_a_runtime():
    settings = HandlerSettings.from_section({"device": "cpu", "precision": "fp32", "channels_last": False})
    assert settings.runtime() == Runtime(torch.device("cpu"), bf16=False, channels_last=False)
    assert HandlerSettings.from_section(None).runtime().channels_last is True  # the default
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="sees no CUDA device"):
            HandlerSettings(device="cuda").runtime()


def test_bf16_and_channels_last_keep_the_answers(tiny_run, sample_images):
    from phototag.inference import load_image

    resize = load_model(tiny_run / "model.pt")[0].config.resize
    batch = torch.stack([load_image(b, 64, resize=resize) for b in sample_images[:6]])
    answers = {}
    for precision, channels_last in (("fp32", False), ("fp32", True), ("bf16", True)):
        model, _, _ = load_model(tiny_run / "model.pt")
        runtime = Runtime.resolve("cpu", precision, channels_last)
        answers[precision, channels_last] = predict_logits(prepare_model(model, runtime), batch, runtime)
    reference = answers["fp32", False]
    assert torch.allclose(answers["fp32", True], reference, atol=1e-4)
    # bf16 keeps 8 bits of mantissa: logits move by about 1 % of their scale, not more. (An untrained model's
    # logits can be tens in eval mode, so the bound scales with them.)
    scale = reference.abs().max().clamp(min=1.0)
    assert (answers["bf16", True] - reference).abs().max() < 0.02 * scale


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]
    with pytest.raises(ValueError):
        batch_buckets(0)


def test_compiled_model_pads_to_buckets_and_matches_eager():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 5)).eval()
    compiled = BucketedCompiledModel(model, max_batch=4)
    seen = []
    compiled.warm_up(lambda n: seen.append(n) or compiled(torch.zeros(n, 3, 16, 16)))
    assert seen == [1, 2, 4]
    x = torch.randn(11, 3, 16, 16)
    with torch.inference_mode():
        for n in (1, 3, 4, 11):  # 3 is padded to 4; 11 runs as 4 + 4 + 3
            out = compiled(x[:n])
            assert out.shape == (n, 5)
            assert torch.allclose(out, model(x[:n]), atol=1e-5)
    with pytest.raises(ValueError, match="compile mode"):
        BucketedCompiledModel(model, 4, mode="fastest")
