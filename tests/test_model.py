import torch

from arpg_core.models.arpg import ARPG, ARPGConfig
from arpg_core.models.rotary import apply_rope, rope_table_2d


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    model = ARPG(ARPGConfig.from_name("ARPG-tiny") if not kw else ARPGConfig(**{
        **ARPGConfig.PRESETS["ARPG-tiny"], **kw}))
    for p in model.parameters():  # the training init zeroes the head; use visible weights here
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def batch(model, b=3, seed=1):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (b, cfg.seq_len), generator=g)
    labels = torch.randint(-1, cfg.num_classes, (b,), generator=g)
    order = torch.stack([torch.randperm(cfg.seq_len, generator=g) for _ in range(b)])
    return tokens, labels, order


def test_published_names_and_shapes():
    with torch.device("meta"):
        model = ARPG(ARPGConfig.from_name("ARPG-L"))
    sd = model.state_dict()
    n_params = sum(p.numel() for p in model.parameters())
    assert 315e6 < n_params < 325e6
    expect = {
        "embeddings.weight": (16384 + 1000 + 3, 1024),
        "layers.self_dec.0.attn.to_q.weight": (1024, 1024),
        "layers.self_dec.11.attn.proj.weight": (1024, 1024),
        "layers.self_dec.0.ffn.w1.weight": (2816, 1024),
        "layers.self_dec.0.ffn.w2.weight": (1024, 2816),
        "layers.self_dec.0.attn_norm.weight": (1024,),
        "layers.cross_dec.11.attn.to_q.weight": (1024, 1024),
        "layers.cross_dec.0.ffn.w3.weight": (2816, 1024),
        "layers.cross_dec.3.ffn_norm.weight": (1024,),
        "layers.norm.weight": (1024,),
        "layers.to_k.weight": (1024, 1024),
        "layers.to_v.weight": (1024, 1024),
        "norm.weight": (1024,),
        "head.weight": (16384, 1024),
    }
    for name, shape in expect.items():
        assert tuple(sd[name].shape) == shape, name
    assert "layers.cross_dec.0.attn.to_k.weight" not in sd
    assert "layers.self_dec.12.attn.to_q.weight" not in sd
    assert not any(n.endswith(".bias") for n in sd)
    for name, dim, layers, hidden in (("ARPG-XL", 1280, 36, 3584), ("ARPG-XXL", 1536, 48, 4096)):
        with torch.device("meta"):
            sd = ARPG(ARPGConfig.from_name(name)).state_dict()
        assert sd["layers.self_dec.0.ffn.w1.weight"].shape == (hidden, dim)
        assert f"layers.cross_dec.{layers // 2 - 1}.attn.proj.weight" in sd
        assert f"layers.cross_dec.{layers // 2}.attn.proj.weight" not in sd


def test_rope_layout_and_zero_class_slot():
    table = rope_table_2d(4, 4, head_dim=16)
    assert table.shape == (17, 8, 2)
    assert torch.count_nonzero(table[0]) == 0  # the class slot: cos = sin = 0
    # position (row 2, col 3): row angles first, then column angles; freqs 1 / base^(2k / half)
    freqs = 1.0 / 10000 ** (torch.arange(4, dtype=torch.float64) * 2 / 8)
    angles = torch.cat([2 * freqs, 3 * freqs]).float()
    p = 2 * 4 + 3
    torch.testing.assert_close(table[p + 1, :, 0], angles.cos())
    torch.testing.assert_close(table[p + 1, :, 1], angles.sin())
    x = torch.randn(1, 1, 2, 16)
    assert torch.count_nonzero(apply_rope(x, table[None, :1])) == 0
    # adjacent pairs rotate: norms of (x[2k], x[2k+1]) are kept
    y = apply_rope(x, table[None, p + 1: p + 2])
    torch.testing.assert_close(y.view(1, 1, 2, 8, 2).norm(dim=-1), x.view(1, 1, 2, 8, 2).norm(dim=-1))


def test_class_token_key_is_zero():
    """In the model's own forward pass the class token sits at the all-zero rotary slot, so its key
    is zero (as in the published weights' layout) while the image tokens' keys are not."""
    model = tiny()
    tokens, labels, order = batch(model, b=2)
    keys = []
    real = model.content_pass

    def spy(*args, **kwargs):
        k, v = real(*args, **kwargs)
        keys.append(k)
        return k, v

    model.content_pass = spy
    model(tokens, labels, order)
    k = keys[0]  # [B, H, N, D]
    assert torch.count_nonzero(k[:, :, 0]) == 0 and (k[:, :, 1:].abs().sum(-1) > 0).all()


def test_causal_in_order_train_and_eval():
    model = tiny()
    tokens, labels, order = batch(model)
    for mode in (True, False):
        model.train(mode)
        base = model(tokens, labels, order)
        i = 5
        changed = tokens.clone()
        pos = order[:, i]  # the token at order position i
        changed.scatter_(1, pos[:, None], (tokens.gather(1, pos[:, None]) + 1) % model.config.vocab_size)
        out = model(changed, labels, order)
        # logits[:, j] for j <= i never see the token at order[:, i]; later ones do
        torch.testing.assert_close(out[:, : i + 1], base[:, : i + 1], rtol=0, atol=0)
        assert (out[:, i + 1:] - base[:, i + 1:]).abs().max() > 1e-4


def test_logits_dtype_and_shape():
    model = tiny()
    tokens, labels, order = batch(model)
    out = model(tokens, labels, order)
    assert out.dtype == torch.float32
    assert out.shape == (3, model.config.seq_len, model.config.vocab_size)


def test_decode_step_matches_teacher_forcing():
    """Content fed a chunk at a time through the cache, then one query for the next position in
    the order, reproduces the teacher-forced logits of that position."""
    model = tiny()
    tokens, labels, order = batch(model)
    ref = model(tokens, labels, order)
    n = model.config.seq_len
    cache = model.new_cache(3, n, model.rope_table())
    feed = model.class_tokens(labels)[:, None]
    slots = torch.zeros(3, 1, dtype=torch.long)
    done = 0
    for chunk in (1, 3, 2, 4, 5):
        target = order[:, done:done + 1]
        logits = model.decode_step(feed, slots, target + 1, cache)
        torch.testing.assert_close(logits, ref[:, done:done + 1], atol=1e-4, rtol=1e-4)
        fed = order[:, done:done + chunk]
        feed, slots = tokens.gather(1, fed), fed + 1
        done += chunk
    assert done == n - 1
