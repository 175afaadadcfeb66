import pytest
import torch

from arpg_core.errors import ConfigError
from arpg_core.tokenizer.vq import VQConfig, VQModel


@pytest.fixture(scope="module")
def vq16_shapes() -> dict[str, list[int]]:
    with torch.device("meta"):
        model = VQModel(VQConfig.from_name("VQ-16"))
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny() -> VQModel:
    torch.manual_seed(0)
    return VQModel(VQConfig.from_name("VQ-tiny")).eval()


# Derived from the architecture: 128 * (1,1,2,2,4) channels, 8-dim codes, 16384 codes.
VQ16_KEYS = {
    "encoder.conv_in.weight": [128, 3, 3, 3],
    "encoder.conv_blocks.0.res.0.conv1.weight": [128, 128, 3, 3],
    "encoder.conv_blocks.0.downsample.conv.weight": [128, 128, 3, 3],
    "encoder.conv_blocks.2.res.0.nin_shortcut.weight": [256, 128, 1, 1],
    "encoder.conv_blocks.4.res.0.nin_shortcut.weight": [512, 256, 1, 1],
    "encoder.conv_blocks.4.res.1.norm2.weight": [512],
    "encoder.conv_blocks.4.attn.0.q.weight": [512, 512, 1, 1],
    "encoder.conv_blocks.4.attn.1.proj_out.weight": [512, 512, 1, 1],
    "encoder.mid.0.conv1.weight": [512, 512, 3, 3],
    "encoder.mid.1.norm.weight": [512],
    "encoder.mid.1.k.weight": [512, 512, 1, 1],
    "encoder.norm_out.weight": [512],
    "encoder.conv_out.weight": [256, 512, 3, 3],
    "quant_conv.weight": [8, 256, 1, 1],
    "quantize.embedding.weight": [16384, 8],
    "quantize.codebook_used": [65536],
    "post_quant_conv.weight": [256, 8, 1, 1],
    "decoder.conv_in.weight": [512, 256, 3, 3],
    "decoder.mid.2.conv2.weight": [512, 512, 3, 3],
    "decoder.conv_blocks.0.res.2.conv2.weight": [512, 512, 3, 3],
    "decoder.conv_blocks.0.attn.2.v.weight": [512, 512, 1, 1],
    "decoder.conv_blocks.0.upsample.conv.weight": [512, 512, 3, 3],
    "decoder.conv_blocks.1.res.0.nin_shortcut.weight": [256, 512, 1, 1],
    "decoder.conv_blocks.3.res.0.nin_shortcut.weight": [128, 256, 1, 1],
    "decoder.conv_blocks.3.upsample.conv.weight": [128, 128, 3, 3],
    "decoder.conv_blocks.4.res.2.conv1.weight": [128, 128, 3, 3],
    "decoder.norm_out.weight": [128],
    "decoder.conv_out.weight": [3, 128, 3, 3],
}


def test_vq16_names_and_shapes(vq16_shapes):
    for key, shape in VQ16_KEYS.items():
        assert vq16_shapes.get(key) == shape, key


def test_vq16_structure(vq16_shapes):
    params = sum(torch.Size(s).numel() for k, s in vq16_shapes.items() if k != "quantize.codebook_used")
    assert 71e6 < params < 73e6  # LlamaGen VQ-16: ~72M
    assert not any(k.startswith("encoder.conv_blocks.4.downsample") for k in vq16_shapes)
    assert not any(k.startswith("decoder.conv_blocks.4.upsample") for k in vq16_shapes)
    assert not any(".conv_blocks.3.attn" in k or "encoder.conv_blocks.0.attn" in k for k in vq16_shapes)
    assert not any(k.startswith("decoder.conv_blocks.1.attn") for k in vq16_shapes)
    assert "encoder.conv_blocks.0.res.2.conv1.weight" not in vq16_shapes  # 2 res blocks per encoder level
    assert "decoder.conv_blocks.4.res.2.conv1.weight" in vq16_shapes  # 3 per decoder level
    assert not any("conv_shortcut" in k for k in vq16_shapes)


def test_vq16_geometry():
    cfg = VQConfig.from_name("VQ-16")
    assert (cfg.downsample, cfg.grid_size) == (16, 16)
    emoji = VQConfig.from_name("VQ-emoji")
    assert (emoji.image_size, emoji.grid_size) == (64, 16)


def test_vq_emoji_fits_size_budget():
    with torch.device("meta"):
        model = VQModel(VQConfig.from_name("VQ-emoji"))
    assert sum(v.numel() for v in model.state_dict().values()) * 4 < 9.5e6


def test_bad_config():
    with pytest.raises(ConfigError):
        VQConfig(ch=48)
    with pytest.raises(ConfigError):
        VQConfig.from_name("VQ-nope")


def test_encode_decode_shapes(tiny):
    cfg = tiny.config
    images = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    codes = tiny.encode(images)
    assert codes.shape == (2, 32 // cfg.downsample, 48 // cfg.downsample)
    assert codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < cfg.codebook_size
    with torch.no_grad():
        assert tiny.decode(codes).shape == images.shape
        recon, loss = tiny(images)
    assert recon.shape == images.shape and loss.codes.shape == codes.shape
    assert torch.equal(loss.codes, codes)
    with pytest.raises(ValueError):
        tiny.encode(torch.zeros(1, 3, 31, 32))


def test_roundtrip_deterministic(tiny):
    codes = torch.randint(0, tiny.config.codebook_size, (2, 8, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        first = tiny.encode(tiny.decode(codes))
        second = tiny.encode(tiny.decode(codes))
    assert torch.equal(first, second)
    with pytest.raises(ValueError):
        tiny.decode(torch.full((1, 2, 2), tiny.config.codebook_size))


def test_straight_through_gradients(tiny):
    model = VQModel(tiny.config)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    recon, loss = model(images)
    recon.abs().mean().backward()  # the reconstruction alone reaches the encoder only straight through
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    model.zero_grad()
    recon, loss = model(images)
    loss.total.backward()  # the codebook learns from its own loss
    assert model.quantize.embedding.weight.grad.abs().sum() > 0
