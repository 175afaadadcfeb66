import copy

import pytest
import torch

from arpg_core.errors import ConfigError, SamplingError
from arpg_core.models.arpg import ARPG, ARPGConfig
from arpg_core.sampling.options import SamplingOptions
from arpg_core.sampling.plan import position_rank, tokens_per_step
from arpg_core.sampling.sampler import UNKNOWN, generate, sample_steps


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = ARPG(ARPGConfig(**{**ARPGConfig.PRESETS["ARPG-tiny"], "grid_size": 6}))
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return m.eval()


def seeds(*values):
    return [torch.Generator().manual_seed(v) for v in values]


@pytest.mark.parametrize("schedule", ["arccos", "cosine", "linear"])
def test_every_schedule_decodes_all_tokens_in_exact_steps(schedule):
    for n in (1, 7, 36, 256, 1024):
        for steps in sorted({1, 2, 3, 8, 32, 64, 256, n} & set(range(1, n + 1))):
            counts = tokens_per_step(n, steps, schedule)
            assert len(counts) == steps and sum(counts) == n and min(counts) >= 1


def test_spec_worked_examples():
    a64 = tokens_per_step(256, 64, "arccos")
    assert a64[:5] == [3, 3, 2, 3, 2] and a64[-4:] == [7, 10, 12, 28]
    c64 = tokens_per_step(256, 64, "cosine")
    assert c64[:3] == [1, 1, 1] and c64[-4:] == [7, 6, 6, 6]
    a32 = tokens_per_step(256, 32, "arccos")
    assert a32[:3] == [6, 5, 5] and a32[-3:] == [14, 17, 40]


def test_one_token_per_step_matches_teacher_forcing(model):
    n = model.config.seq_len
    events = list(sample_steps(model, [2, 1], steps=n, cfg_scale=1.0, generator=seeds(3, 4),
                               return_probs=True))
    assert len(events) == n
    final = events[-1].tokens.flatten(1)
    order = events[-1].order
    logits = model(final, torch.tensor([2, 1]), order)
    probs = logits.softmax(-1).gather(-1, final.gather(1, order)[..., None]).squeeze(-1)  # [B, N]
    got = torch.stack([e.probs[:, 0] for e in events], dim=1)
    torch.testing.assert_close(got, probs, atol=1e-5, rtol=1e-4)


def test_each_position_once_and_known_tokens_kept(model):
    g = model.config.grid_size
    known_mask = torch.zeros(g, g, dtype=torch.bool)
    known_mask[:, : g // 2] = True
    known = torch.randint(0, model.config.vocab_size, (g, g))
    events = list(sample_steps(model, [0, 3], known_tokens=known, known_mask=known_mask, steps=8,
                               generator=seeds(1, 2)))
    # 18 of 36 tokens remain: the step count scales from 8 to 4
    assert len(events) == 4
    decoded = torch.cat([e.positions for e in events], dim=1)
    for row in decoded:
        assert sorted(row.tolist()) == torch.nonzero(~known_mask.flatten()).flatten().tolist()
    final = events[-1].tokens
    assert torch.equal(final[:, known_mask], known[known_mask].expand(2, -1))
    assert (final != UNKNOWN).all()
    first = events[0].tokens
    assert (first[:, ~known_mask] == UNKNOWN).sum() == 2 * (18 - events[0].positions.shape[1])


def test_same_seed_batch_one_and_batch_eight(model):
    alone = generate(model, [1], steps=6, cfg_scale=3.0, generator=seeds(42))
    gens = seeds(*range(100, 108))
    gens[5] = torch.Generator().manual_seed(42)
    batched = generate(model, [0, 1, 2, 3, 0, 1, 2, 3], steps=6, cfg_scale=3.0, generator=gens)
    assert torch.equal(alone[0], batched[5])
    again = generate(model, [1], steps=6, cfg_scale=3.0, generator=seeds(42))
    assert torch.equal(alone, again)
    other = generate(model, [1], steps=6, cfg_scale=3.0, generator=seeds(43))
    assert not torch.equal(alone, other)


def test_cfg_scale_one_is_the_conditional_branch(model):
    plain = generate(model, [2, 0], steps=9, cfg_scale=1.0, generator=seeds(5, 6))
    # A scale a hair above 1 runs the batched cond + uncond path; it must agree.
    guided = generate(model, [2, 0], steps=9, cfg_scale=1.0 + 1e-6, generator=seeds(5, 6))
    assert torch.equal(plain, guided)
    strong = generate(model, [2, 0], steps=9, cfg_scale=8.0, generator=seeds(5, 6))
    assert not torch.equal(plain, strong)


def test_orders_and_explicit_permutation(model):
    g = model.config.grid_size
    for kind in ("raster", "spiral", "edges-in"):
        rank = position_rank(kind, g, g)
        assert sorted(rank.tolist()) == list(range(g * g))
    spiral = position_rank("spiral", g, g)
    centre = {(g // 2 - 1) * g + g // 2 - 1, (g // 2 - 1) * g + g // 2, (g // 2) * g + g // 2 - 1,
              (g // 2) * g + g // 2}
    assert set(spiral[:4].tolist()) == centre
    edges = position_rank("edges-in", g, g)
    assert set(edges[-4:].tolist()) == centre
    perm = torch.randperm(g * g, generator=torch.Generator().manual_seed(0))
    events = list(sample_steps(model, [1], steps=g * g, order=perm, cfg_scale=1.0, generator=seeds(0)))
    assert torch.cat([e.positions for e in events], dim=1)[0].tolist() == perm.tolist()


def test_other_grids_and_dtypes(model):
    out = generate(model, [1], grid=(4, 9), steps=5, generator=seeds(0))
    assert out.shape == (1, 36) and (out >= 0).all()
    for dtype in (torch.bfloat16, torch.float16):
        low = ARPG(model.config).to(dtype)
        low.load_state_dict(model.state_dict())
        tokens = generate(low.eval(), [0, 1, 2], steps=4, generator=seeds(0, 1, 2))
        assert tokens.shape == (3, 36) and tokens.max() < model.config.vocab_size


def test_greedy_and_top_k_one_agree(model):
    a = generate(model, [3], steps=4, temperature=0, generator=seeds(0))
    b = generate(model, [3], steps=4, top_k=1, generator=seeds(0))
    assert torch.equal(a, b)


def test_bad_options_are_typed_errors(model):
    for kwargs in (dict(steps=0), dict(steps=37), dict(schedule="zigzag"), dict(order="diagonal"),
                   dict(top_p=1.5), dict(schedule=[1, 2, 3])):
        with pytest.raises(SamplingError):
            generate(model, [0], generator=seeds(0), **kwargs)
    with pytest.raises(ConfigError, match="class labels must be in"):
        generate(model, [7], steps=4, generator=seeds(0))
    full = torch.ones(6, 6, dtype=torch.bool)
    with pytest.raises(SamplingError):
        generate(model, [0], known_tokens=torch.zeros(6, 6), known_mask=full)


@pytest.mark.parametrize("kwargs", [dict(cfg_scale=float("inf")), dict(temperature=float("nan")),
                                    dict(temperature="hot"), dict(cfg_scale=True), dict(schedule=["a", 35]),
                                    dict(schedule=[1.5, 34.5]), dict(schedule=[]), dict(grid=("a", 6)),
                                    dict(grid=(6,)), dict(grid=(300, 2)), dict(steps=4, options=SamplingOptions())])
def test_odd_numbers_are_refused_before_sampling(model, kwargs):
    """Each of these once gave a raw ValueError mid-sampling, a silent truncation, or a flat image of
    one code from NaN probabilities."""
    with pytest.raises(SamplingError):
        next(sample_steps(model, [0], generator=seeds(0), **kwargs))


def test_a_vanishing_temperature_is_greedy_and_nan_weights_are_named(model):
    tiny = generate(model, [3], steps=4, temperature=1e-40, generator=seeds(0))  # 1/T overflows float32
    assert torch.equal(tiny, generate(model, [3], steps=4, temperature=0, generator=seeds(0)))
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.head.weight[5] = float("nan")  # one code's logit, in every step
    with pytest.raises(SamplingError, match="non-finite"):
        generate(broken, [3], steps=4, generator=seeds(0))
    huge = generate(model, [3], steps=4, schedule=[9, 9, 9, 9.0], generator=seeds(0))  # 9.0 counts as 9
    assert (huge >= 0).all()


def test_windowed_canvas_decodes_everything_once(model):
    from arpg_core.sampling.editing import outpaint_canvas, plan_windows, sample_windowed
    from arpg_core.sampling.options import SamplingOptions

    g = model.config.grid_size
    source = torch.randint(0, model.config.vocab_size, (g, g))
    canvas = outpaint_canvas(source, (2, 5, 1, 3))  # 9 x 14 cells, larger than the 6 x 6 window
    windows = plan_windows(canvas.known_mask, g, g // 2)
    assert all(h <= g and w <= g for _, _, h, w in windows)
    events = list(sample_windowed(model, [1], canvas, generator=seeds(0), options=SamplingOptions(steps=5)))
    assert [e.step for e in events] == list(range(events[-1].num_steps)) and events[-1].done
    decoded = torch.cat([e.positions for e in events], dim=1)[0]
    unknown = torch.nonzero(~canvas.known_mask.flatten()).flatten()
    assert sorted(decoded.tolist()) == unknown.tolist()
    final = events[-1].tokens[0]
    assert torch.equal(final[2:2 + g, 3:3 + g], source) and (final != UNKNOWN).all()


def test_several_tokens_per_step_match_teacher_forcing(model):
    """Each query of a multi-token step sees the tokens of earlier steps only, never its step-mates: its
    probability equals teacher forcing with that target moved to the first slot of the step."""
    labels = torch.tensor([2, 1])
    events = list(sample_steps(model, labels.tolist(), steps=8, cfg_scale=1.0, generator=seeds(3, 4),
                               return_probs=True))
    final, order = events[-1].tokens.flatten(1), events[-1].order
    done = 0
    for event in events:
        k = event.probs.shape[1]
        assert k == event.positions.shape[1]
        for j in range(k):
            moved = torch.cat([order[:, :done], order[:, done + j:done + j + 1], order[:, done:done + j],
                               order[:, done + j + 1:]], dim=1)
            logits = model(final, labels, moved)[:, done]
            want = logits.softmax(-1).gather(-1, final.gather(1, moved[:, done:done + 1])).squeeze(-1)
            torch.testing.assert_close(event.probs[:, j], want, atol=1e-5, rtol=1e-4)
        done += k
    assert done == model.config.seq_len and max(e.probs.shape[1] for e in events) > 1


def test_position_interpolation_on_larger_grids(model):
    from arpg_core.models.rotary import rope_table_2d

    plain, squeezed = rope_table_2d(6, 6, 16), rope_table_2d(6, 6, 16, scale=(2.0, 2.0))
    bands = 16 // 4  # per axis
    row_plain, row_squeezed = plain[1:, :bands], squeezed[1:, :bands]
    torch.testing.assert_close(row_plain[:, :2], row_squeezed[:, :2])  # the two fastest bands keep positions
    assert not torch.allclose(row_plain[:, 2:], row_squeezed[:, 2:])
    big = dict(grid=(12, 12), steps=6, generator=0)
    assert not torch.equal(generate(model, [1], rope_interpolation=True, **big),
                           generate(model, [1], rope_interpolation=False, **big))
    assert torch.equal(generate(model, [1], rope_interpolation=True, steps=6, generator=0),
                       generate(model, [1], rope_interpolation=False, steps=6, generator=0))


def test_top_p_and_linear_guidance():
    from arpg_core.sampling.plan import cfg_per_step
    from arpg_core.sampling.sampler import filter_logits

    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    kept = lambda p: torch.isfinite(filter_logits(logits, None, p)).tolist()
    assert kept(0.7) == [True, True, False, False]  # the smallest prefix reaching 0.7
    assert kept(0.5) == [True, False, False, False] and kept(1e-6) == [True, False, False, False]
    assert kept(0.81) == [True, True, True, False]
    assert cfg_per_step([1, 1, 1, 1], 5.0, "linear", 4) == [2.0, 3.0, 4.0, 5.0]
    assert cfg_per_step([2, 2], 5.0, "linear", 8) == [4.0, 5.0]  # 4 known tokens count as decoded


def test_full_step_attention_matches_a_block_causal_forward(model):
    """step_attention="full" (the authors' sampler): tokens fed in one step see each other. Each
    probability equals one forward pass over the whole stream with a block-causal mask."""
    labels = torch.tensor([2, 1])
    kw = dict(steps=8, cfg_scale=1.0, return_probs=True)
    events = list(sample_steps(model, labels.tolist(), generator=seeds(3, 4), step_attention="full", **kw))
    causal = list(sample_steps(model, labels.tolist(), generator=seeds(3, 4), **kw))
    final, order = events[-1].tokens.flatten(1), events[-1].order
    n = model.config.seq_len
    stream = torch.cat([model.class_tokens(labels)[:, None], final.gather(1, order)], dim=1)  # [B, 1 + N]
    slots = torch.cat([torch.zeros_like(order[:, :1]), order + 1], dim=1)
    group = torch.tensor([0] + [s + 1 for s, e in enumerate(events) for _ in range(e.positions.shape[1])])
    rope = model.rope_table()
    with torch.no_grad():
        cache = model.new_cache(2, 1 + n, rope)
        k, v = model.content_pass(stream, rope[slots], cache=cache, mask=group[None, :] <= group[:, None])
        done = 0
        for event in events:
            seen = 1 + done  # the class and every token of earlier steps
            logits = model.query_pass(rope[event.positions + 1], k[:, :, :seen], v[:, :, :seen])
            want = logits.softmax(-1).gather(-1, final.gather(1, event.positions)[..., None]).squeeze(-1)
            torch.testing.assert_close(event.probs, want, atol=1e-5, rtol=1e-4)
            done += event.positions.shape[1]
    # the first step feeds the class alone, so it agrees; later multi-token steps do not
    torch.testing.assert_close(events[0].probs, causal[0].probs)
    assert not torch.equal(events[-1].tokens, causal[-1].tokens)
    from arpg_core.sampling.options import SamplingOptions

    assert SamplingOptions.from_name("paper").step_attention == "full"
    # With known tokens, step 0 feeds the class and all of them: causal in both modes, so the class
    # token never sees the picture (and the first predictions agree); later steps differ.
    known = torch.zeros(6, 6, dtype=torch.bool)
    known[:2] = True
    given = dict(known_tokens=torch.arange(36).view(6, 6) % model.config.vocab_size, known_mask=known)
    full = list(sample_steps(model, [1], generator=seeds(5), step_attention="full", **given, **kw))
    causal = list(sample_steps(model, [1], generator=seeds(5), **given, **kw))
    torch.testing.assert_close(full[0].probs, causal[0].probs, rtol=0, atol=0)
    assert not torch.equal(full[-1].tokens, causal[-1].tokens)


def test_bad_known_tokens_orders_and_batches_are_typed_errors(model):
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[0, :3] = True
    v = model.config.vocab_size
    for bad in (v, -1, 10**6):  # the mask token, a negative, past the table
        tokens = torch.zeros(6, 6, dtype=torch.long)
        tokens[0, 1] = bad
        with pytest.raises(SamplingError, match="image codes"):
            generate(model, [0], known_tokens=tokens, known_mask=mask, generator=0)
    tokens = torch.full((6, 6), -1)
    tokens[0, :3] = 5  # unknown cells may hold anything
    assert (generate(model, [0], known_tokens=tokens, known_mask=mask, generator=0)[0, :3] == 5).all()
    with pytest.raises(SamplingError, match="go together"):
        generate(model, [0], known_tokens=tokens, generator=0)
    with pytest.raises(SamplingError, match="rows for a batch of 3"):
        generate(model, [0, 1, 2], known_tokens=tokens, known_mask=mask.expand(2, 6, 6), generator=0)
    with pytest.raises(SamplingError, match="at least one"):
        generate(model, [], generator=0)
    with pytest.raises(SamplingError, match="explicit order"):
        generate(model, [0], order=[0, 1, 2], steps=4, generator=0)
    assert generate(model, [0], steps=4.0, top_k=5.0, generator=0).shape == (1, 36)


def test_a_filtered_token_is_never_drawn():
    from arpg_core.sampling.sampler import draw

    logits = torch.tensor([[[0.0, 5.0, 4.0, 3.0]]])
    for top_k, top_p in ((2, None), (None, 0.5)):
        token, prob = draw(logits, 1.0, top_k, top_p, torch.zeros(1, 1))  # the lowest uniform there is
        assert token.item() == 1 and prob.item() > 0


def test_windowed_stride_larger_than_the_window_is_refused(model):
    from arpg_core.sampling.editing import outpaint_canvas, sample_windowed

    canvas = outpaint_canvas(torch.zeros(6, 6, dtype=torch.long), (0, 6, 0, 0))
    for stride in (7, -1):
        with pytest.raises(SamplingError, match="stride"):
            next(sample_windowed(model, [1], canvas, generator=0, stride=stride, steps=4))
