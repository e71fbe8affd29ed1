"""Adapters for ``transformers`` models (tiny random configs built here: nothing is downloaded)."""

import pytest
import torch

import ess_reg

transformers = pytest.importorskip("transformers")


def tiny_mamba(seed=0):
    torch.manual_seed(seed)
    config = transformers.MambaConfig(vocab_size=32, hidden_size=16, state_size=4, num_hidden_layers=2,
                                      expand=2, conv_kernel=4, time_step_rank=4)
    return transformers.MambaForCausalLM(config).double().eval()


def penalized(model, ids, objective, lr, steps, layer_param):
    """The penalty's value before and after ``steps`` optimizer steps on it alone, checking at each
    step that its gradient reaches ``layer_param(model)`` (a parameter, or several)."""
    penalty = ess_reg.ESSPenalty(model, objective, measure="ess", schedule=ess_reg.Schedule(weight=1.0, ramp_steps=0))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    before = penalty(ids, step=1).item()
    for step in range(steps):
        optimizer.zero_grad()
        penalty(ids, step=step + 1).backward()
        params = layer_param(model)
        for param in params if isinstance(params, (list, tuple)) else [params]:
            assert param.grad is not None and param.grad.abs().sum() > 0  # gradients reach the layer
        optimizer.step()
    return before, penalty(ids, step=steps + 1).item()


def test_mamba_operator_reproduces_the_mixer():
    from ess_reg.adapters.hf_mamba import mamba_operator, mamba_readout, mamba_streams

    model = tiny_mamba()
    mixer = model.backbone.layers[0].mixer
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    op = mamba_operator(mixer, x)
    assert op.batch_shape == (2, mixer.intermediate_size) and op.state_size == 4
    u = mamba_streams(mixer, x)[0]
    y = (op.materialize() @ u.transpose(1, 2).unsqueeze(-1)).squeeze(-1)      # (B, E, L)
    # transformers computes its discretized A and B in float32: agreement to float32 precision
    assert torch.allclose(mamba_readout(mixer, x, y), mixer(x), atol=1e-5, rtol=1e-5)


def test_a_mamba_model_is_measured_as_it_is():
    model = tiny_mamba()
    ids = torch.randint(0, 32, (2, 24))
    reports = ess_reg.measure(model, ids, kind="tolerance")
    assert set(reports) == {"backbone.layers.0.mixer", "backbone.layers.1.mixer"}
    for report in reports.values():
        assert torch.all(report.ess.values <= 4 + 1e-9)  # ESS <= TSS (state_size 4)
        assert report.ess.values.max() > 0


def test_the_penalty_moves_a_mamba_models_ess_its_way():
    ids = torch.randint(0, 32, (4, 24), generator=torch.Generator().manual_seed(0))
    before, after = penalized(tiny_mamba(1).train(), ids, "maximize", 3e-3, 15,
                              lambda m: m.backbone.layers[0].mixer.A_log)
    assert after < before  # maximize: the penalty (-ESS) falls, ESS rises


def tiny_llama(attn="eager", seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      attn_implementation=attn)
    return transformers.LlamaForCausalLM(config).double().eval()


def test_llama_attention_operator_reproduces_the_layer():
    model = tiny_llama()
    ids = torch.randint(0, 32, (2, 12))
    attn = model.model.layers[1].self_attn
    seen = {}
    handle = attn.register_forward_pre_hook(lambda m, a, k: seen.update(h=k["hidden_states"]), with_kwargs=True)
    with ess_reg.probe.capture_operators(model) as capture:
        model(ids)
    handle.remove()
    op = capture.operators()["model.layers.1.self_attn"]
    assert op.batch_shape == (2, 4) and op.multiplicity == 4  # 4 query heads of 4 channels
    values = attn.v_proj(seen["h"]).view(2, 12, 2, 4).transpose(1, 2).repeat_interleave(2, dim=1)  # GQA: 2 groups
    heads = op.materialize() @ values
    out = attn.o_proj(heads.transpose(1, 2).reshape(2, 12, 16))
    cos_sin = model.model.rotary_emb(seen["h"], torch.arange(12)[None])
    causal = torch.full((12, 12), float("-inf"), dtype=torch.float64).triu(1)[None, None]  # the eager path adds it
    expected = attn(seen["h"], position_embeddings=cos_sin, attention_mask=causal)[0]
    assert torch.allclose(out, expected, atol=1e-10)


def test_a_llama_model_is_measured_per_head_and_sdpa_is_named():
    reports = ess_reg.measure(tiny_llama(), torch.randint(0, 32, (2, 16)), kind="tolerance")
    assert set(reports) == {"model.layers.0.self_attn", "model.layers.1.self_attn"}
    for report in reports.values():
        assert report.ess.values.shape[:2] == (2, 4)  # per example, per head
        tss = ess_reg.state_size.growing_state_size(report.ess.indices, 16).to(torch.float64)
        assert torch.all(report.ess.values <= tss + 1e-9)
    with pytest.raises(RuntimeError, match="attn_implementation='eager'"):
        ess_reg.measure(tiny_llama("sdpa"), torch.randint(0, 32, (2, 16)))


def test_the_penalty_moves_a_llama_models_attention_ess_its_way():
    ids = torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(0))
    before, after = penalized(tiny_llama(seed=1).train(), ids, "minimize", 1e-2, 10,
                              lambda m: m.model.layers[0].self_attn.q_proj.weight)
    assert after < before  # minimize: the attention's ESS falls


def tiny_mamba2(seed=0):
    torch.manual_seed(seed)
    config = transformers.Mamba2Config(vocab_size=32, hidden_size=16, state_size=4, num_heads=4, head_dim=8,
                                       expand=2, n_groups=2, num_hidden_layers=2, chunk_size=8, conv_kernel=4)
    return transformers.Mamba2ForCausalLM(config).double().eval()


def test_mamba2_operator_reproduces_the_mixer():
    from ess_reg.adapters.hf_mamba import mamba2_operator, mamba2_readout, mamba2_streams

    model = tiny_mamba2()
    mixer = model.backbone.layers[1].mixer
    with torch.no_grad():  # non-trivial skip and decays, so that every part is checked
        mixer.D.uniform_(-1, 1)
        mixer.A_log.uniform_(-1, 1)
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    op = mamba2_operator(mixer, x)
    assert op.batch_shape == (2, 4) and op.multiplicity == 8 and op.state_size == 4
    y = op.materialize() @ mamba2_streams(mixer, x)[1]  # (B, H, L, head_dim)
    # transformers runs its scan and gated norm in float32: agreement to float32 precision
    assert torch.allclose(mamba2_readout(mixer, x, y), mixer(x), atol=1e-5, rtol=1e-5)


def test_a_mamba2_model_is_measured_and_penalized():
    model = tiny_mamba2(1)
    ids = torch.randint(0, 32, (2, 20), generator=torch.Generator().manual_seed(0))
    reports = ess_reg.measure(model, ids, kind="tolerance")
    assert set(reports) == {"backbone.layers.0.mixer", "backbone.layers.1.mixer"}
    assert all(torch.all(r.ess.values <= 4 + 1e-9) and r.value_channels == 32 for r in reports.values())
    before, after = penalized(model.train(), ids, "maximize", 3e-3, 10, lambda m: m.backbone.layers[0].mixer.A_log)
    assert after < before


def test_analyze_gives_a_per_head_report_of_a_hugging_face_model():
    ids = torch.randint(1, 32, (2, 20), generator=torch.Generator().manual_seed(0))
    ids[:, 10] = 0  # a separator
    result = ess_reg.analyze(tiny_llama(), ids, separators=[0], kind="tolerance")
    assert set(result.per_head) == {"model.layers.0.self_attn", "model.layers.1.self_attn"}
    assert all(h.shape == (4,) for h in result.per_head.values())  # one value per head
    assert all(-10 < m <= 1 for m in result.modulation.values())
    mamba = ess_reg.analyze(tiny_mamba(), ids[:, :12])
    assert all(h.shape == (32,) for h in mamba.per_head.values())  # one per inner channel


def test_a_left_padded_batch_given_as_model_inputs_measures_what_the_sequences_measure_unpadded():
    ids = torch.randint(1, 32, (2, 8), generator=torch.Generator().manual_seed(1))
    padded = torch.cat([torch.zeros(2, 4, dtype=torch.long), ids], 1)
    padded[1, :6] = 0  # the second example is shorter: 6 real tokens
    mask = (torch.arange(12) >= torch.tensor([[4], [6]])).long()
    model = tiny_llama()
    result = ess_reg.analyze(model, {"input_ids": padded, "attention_mask": mask})
    first, second = ess_reg.analyze(model, ids[:1]), ess_reg.analyze(model, ids[1:, 2:])
    assert sorted(result.by_length) == [6, 8]
    for name in result.per_head:  # the mean over every real example and index: 7 and 5 indices
        expected = (7 * first.per_head[name] + 5 * second.per_head[name]) / 12
        torch.testing.assert_close(result.per_head[name], expected)
    unmasked = ess_reg.analyze(model, padded)  # the pad positions measured too: another answer
    assert not all(torch.allclose(unmasked.per_head[n], result.per_head[n]) for n in result.per_head)


def test_select_init_scores_hugging_face_candidates():
    ids = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(0))
    result = ess_reg.select_init(lambda c: tiny_mamba(c["seed"]), [{"seed": 0}, {"seed": 1}, {"seed": 2}], ids,
                                 score="ess")
    assert len(result.scores) == 3 and result.scores[result.index] == max(result.scores)
    again = ess_reg.measure(tiny_mamba(result.candidate["seed"]), ids)  # the chosen one, rebuilt, scores the same
    assert sum(r.ess_avg for r in again.values()) / len(again) == pytest.approx(result.scores[result.index], rel=1e-5)


def _windowed(name):
    """Tiny random models whose layers see a window or a block, as their configs say."""
    torch.manual_seed(0)
    common = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2,
                  max_position_embeddings=64, attn_implementation="eager")
    if name == "mistral":  # one window for every layer, set on the config only
        return transformers.MistralForCausalLM(transformers.MistralConfig(num_hidden_layers=2, sliding_window=8,
                                                                          **common)), {0: 8, 1: 8}
    if name == "gemma2":  # local and global layers in turn
        config = transformers.Gemma2Config(num_hidden_layers=2, sliding_window=6, head_dim=8, **common)
        return transformers.Gemma2ForCausalLM(config), {i: 6 if t == "sliding_attention" else None
                                                       for i, t in enumerate(config.layer_types)}
    if name == "gpt_neo":
        config = transformers.GPTNeoConfig(vocab_size=32, hidden_size=16, num_layers=2, num_heads=2, window_size=5,
                                           attention_types=[[["local", "global"], 1]], max_position_embeddings=64,
                                           attn_implementation="eager")
        return transformers.GPTNeoForCausalLM(config), {0: 5, 1: None}
    if name == "llama4":  # chunked attention on the layers without rope, blocks of 8
        config = transformers.Llama4TextConfig(intermediate_size_mlp=32, num_hidden_layers=2, head_dim=8,
                                               attention_chunk_size=8, num_local_experts=2, num_experts_per_tok=1,
                                               no_rope_layers=[1, 0], **common)
        return transformers.Llama4ForCausalLM(config), {0: ("chunk", 8), 1: None}
    raise ValueError(name)


@pytest.mark.parametrize("name", ["mistral", "gemma2", "gpt_neo", "llama4"])
def test_windowed_and_chunked_layers_get_their_mask_s_reach_and_attain_it(name):
    model, windows = _windowed(name)
    model = model.double().eval()
    L = 24
    ids = torch.randint(1, 32, (2, L), generator=torch.Generator().manual_seed(0))
    reports = ess_reg.measure(model, ids, kind="tolerance", ess_options={"tol": 1e-9})
    assert len(reports) == len(windows)
    for (name_, report), window in zip(reports.items(), windows.values()):
        idx = report.ess.indices
        full = torch.minimum(idx, L - idx).double()
        if window is None:
            expected = full
        elif isinstance(window, tuple):  # a block of C: the split inside it, 0 at its start
            chunk = window[1]
            start = idx - idx % chunk
            expected = torch.minimum(idx % chunk, torch.clamp(start + chunk, max=L) - idx).double()
        else:
            expected = torch.clamp(full, max=window - 1)
        reach = report.reach.double()
        torch.testing.assert_close(reach, expected)  # what the mask lets through
        measured = report.ess.values.amax(dim=(0, 1)).double()
        assert torch.all(measured <= reach + 1e-9), name_  # the rank never exceeds it...
        assert torch.equal(measured.round(), reach), name_  # ...and random weights attain it


def test_chunked_attention_s_tss_is_counted_within_its_block():
    from ess_reg.state_size import chunked_state_size

    idx = torch.arange(1, 20)
    tss = chunked_state_size(8)(idx, 20)
    # blocks [0, 8), [8, 16), [16, 20): zero at a block's start, the shorter side of the split inside
    assert tss.tolist() == [1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1]


def _hybrid(name):
    """A tiny random hybrid (Mamba2 layers beside attention) and the class name of its mixer."""
    torch.manual_seed(0)
    common = dict(vocab_size=32, hidden_size=16, num_attention_heads=2, num_key_value_heads=2, intermediate_size=32,
                  attn_implementation="eager")
    mamba = dict(mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=1, mamba_d_state=4, mamba_d_conv=4, mamba_expand=2)
    if name == "bamba":
        config = transformers.BambaConfig(num_hidden_layers=2, attn_layer_indices=[1], **mamba, **common)
        return transformers.BambaForCausalLM(config), "BambaMixer", torch.float64
    if name == "nemotron_h":
        config = transformers.NemotronHConfig(num_hidden_layers=2, hybrid_override_pattern="M*", mamba_num_heads=4,
                                              mamba_head_dim=8, n_groups=1, ssm_state_size=4, conv_kernel=4, expand=2,
                                              head_dim=8, **common)
        return transformers.NemotronHForCausalLM(config), "NemotronHMamba2Mixer", torch.float64
    if name == "zamba2":
        config = transformers.Zamba2Config(num_hidden_layers=2, layers_block_type=["mamba", "hybrid"],
                                           hybrid_layer_ids=[1], num_mem_blocks=1, mamba_headdim=8, n_mamba_heads=4,
                                           mamba_ngroups=1, mamba_d_state=4, mamba_d_conv=4, mamba_expand=2, **common)
        return transformers.Zamba2ForCausalLM(config), "Zamba2MambaMixer", torch.float64
    if name in ("falcon_h1", "falcon_h1_norm"):  # scaled input and streams (mup); gated norm or a silu gate
        config = transformers.FalconH1Config(num_hidden_layers=2, mamba_d_ssm=32, mamba_rms_norm=name.endswith("norm"),
                                             **mamba, **common)
        return transformers.FalconH1ForCausalLM(config), "FalconH1Mixer", torch.float64
    if name == "granitemoehybrid":  # its experts' grouped matmul takes float32 only
        config = transformers.GraniteMoeHybridConfig(num_hidden_layers=2, layer_types=["mamba", "attention"],
                                                     num_local_experts=2, num_experts_per_tok=1, **mamba, **common)
        return transformers.GraniteMoeHybridForCausalLM(config), "GraniteMoeHybridMambaLayer", torch.float32
    raise ValueError(name)


def test_the_penalty_moves_a_hybrid_s_ess_its_way_through_both_kinds_of_layer():
    model, _, _ = _hybrid("bamba")  # a Mamba2 layer, then an attention layer
    model = model.double().train()
    ids = torch.randint(1, 32, (4, 16), generator=torch.Generator().manual_seed(0))
    both = lambda m: [m.model.layers[0].mamba.A_log, m.model.layers[1].self_attn.q_proj.weight]  # noqa: E731
    before, after = penalized(model, ids, "maximize", 3e-3, 10, both)
    assert after < before  # maximize: the penalty (-ESS) falls, ESS rises


@pytest.mark.parametrize("name", ["jamba", "falcon_mamba"])
def test_a_mamba_mixer_with_norms_on_dt_b_c_is_measured_as_the_operator_it_applies(name):
    from ess_reg.adapters.hf_mamba import mamba_operator, mamba_readout, mamba_streams

    torch.manual_seed(0)
    if name == "jamba":  # its experts' grouped matmul takes float32 only
        config = transformers.JambaConfig(vocab_size=32, hidden_size=16, num_attention_heads=2, num_key_value_heads=2,
                                          intermediate_size=32, num_hidden_layers=2, attn_layer_period=2,
                                          attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
                                          num_experts=2, mamba_d_state=4, mamba_d_conv=4, mamba_expand=2,
                                          mamba_dt_rank=4, attn_implementation="eager")
        model, dtype, mixer_class = transformers.JambaForCausalLM(config), torch.float32, "JambaMambaMixer"
    else:
        config = transformers.FalconMambaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2, state_size=4,
                                                expand=2, conv_kernel=4, time_step_rank=4)
        model, dtype, mixer_class = transformers.FalconMambaForCausalLM(config), torch.float64, "FalconMambaMixer"
    model = model.to(dtype).eval()
    mixer = next(m for m in model.modules() if type(m).__name__ == mixer_class)
    x = torch.randn(2, 11, 16, dtype=dtype)
    op = mamba_operator(mixer, x)
    u = mamba_streams(mixer, x)[0]
    y = (op.materialize() @ u.transpose(1, 2).unsqueeze(-1)).squeeze(-1)
    out = mixer(x)
    scale = out.abs().max().item()
    assert scale > 0 and torch.allclose(mamba_readout(mixer, x, y), out, atol=1e-5 * scale, rtol=1e-4)
    reports = ess_reg.measure(model, torch.randint(1, 32, (2, 12)), kind="tolerance")
    assert mixer_class in {type(m).__name__ for n, m in model.named_modules() if n in reports}


@pytest.mark.parametrize("name", ["bamba", "nemotron_h", "zamba2", "granitemoehybrid", "falcon_h1", "falcon_h1_norm"])
def test_a_hybrid_s_mamba2_mixer_is_measured_as_the_operator_it_applies(name):
    from ess_reg.adapters.hf_mamba import mamba2_operator, mamba2_readout, mamba2_streams

    model, mixer_class, dtype = _hybrid(name)
    model = model.to(dtype).eval()
    mixer = next(m for m in model.modules() if type(m).__name__ == mixer_class)
    with torch.no_grad():  # non-trivial skip and decays, so that every part is checked
        mixer.D.uniform_(-1, 1)
        mixer.A_log.uniform_(-1, 1)
    x = torch.randn(2, 13, 16, dtype=dtype)
    op = mamba2_operator(mixer, x)
    assert op.batch_shape == (2, 4) and op.multiplicity == 8 and op.state_size == 4
    y = op.materialize() @ mamba2_streams(mixer, x)[1]
    out = mixer(x)
    out = out[0] if isinstance(out, tuple) else out
    scale = out.abs().max().item()
    assert scale > 0 and torch.allclose(mamba2_readout(mixer, x, y), out, atol=1e-5 * scale, rtol=1e-4)
    reports = ess_reg.measure(model, torch.randint(1, 32, (2, 12)), kind="tolerance")
    measured = {n: type(m).__name__ for n, m in model.named_modules() if n in reports}
    assert mixer_class in measured.values()  # the hybrid's own mixer class, by name
    for layer, report in reports.items():
        if measured[layer] == mixer_class:
            assert torch.all(report.ess.values <= 4 + 1e-6)  # ESS <= TSS (its state of 4)


def test_zamba_s_multi_head_mamba_is_measured_as_the_operator_it_applies():
    from ess_reg.adapters.hf_mamba import zamba_mamba_operator, zamba_mamba_readout, zamba_mamba_streams

    torch.manual_seed(0)
    config = transformers.ZambaConfig(vocab_size=32, hidden_size=16, num_attention_heads=2, num_key_value_heads=2,
                                      intermediate_size=32, num_hidden_layers=3,
                                      layers_block_type=["mamba", "hybrid", "hybrid"], mamba_d_state=4, mamba_d_conv=4,
                                      mamba_expand=2, mamba_dt_rank=4, n_mamba_heads=2, attn_implementation="eager")
    model = transformers.ZambaForCausalLM(config).double().eval()
    mixer = model.model.layers[0].mamba
    with torch.no_grad():  # heads that differ (their projections start at zero) and a skip
        mixer.x_proj_weight.normal_()
        mixer.D.uniform_(-1, 1)
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    op = zamba_mamba_operator(mixer, x)
    assert op.batch_shape == (2, 32) and op.state_size == 4
    u = zamba_mamba_streams(mixer, x)[0]
    y = (op.materialize() @ u.unsqueeze(-1)).squeeze(-1)
    out = mixer(x)
    scale = out.abs().max().item()
    assert scale > 0 and torch.allclose(zamba_mamba_readout(mixer, x, y), out, atol=1e-6 * scale, rtol=1e-5)
    reports = ess_reg.measure(model, torch.randint(1, 32, (2, 12)), kind="tolerance")
    measured = {n: type(m).__name__ for n, m in model.named_modules() if n in reports}
    assert list(measured.values()).count("ZambaMambaMixer") == 3  # every layer's Mamba, the hybrids' too
    assert all(torch.all(r.ess.values <= 4 + 1e-6) for n, r in reports.items() if measured[n] == "ZambaMambaMixer")


def tiny_qwen3_next(dtype=torch.float64):
    torch.manual_seed(0)
    config = transformers.Qwen3NextConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                          linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
                                          linear_value_head_dim=4, linear_conv_kernel_dim=4,
                                          layer_types=["linear_attention", "full_attention"], num_experts=2,
                                          num_experts_per_tok=1, moe_intermediate_size=16,
                                          shared_expert_intermediate_size=16, attn_implementation="eager")
    return transformers.Qwen3NextForCausalLM(config).to(dtype).eval()


def test_qwen3_next_gated_deltanet_is_measured_as_the_delta_rule_it_applies():
    from ess_reg.adapters.hf_deltanet import gated_deltanet_operator, gated_deltanet_readout, gated_deltanet_streams

    model = tiny_qwen3_next(torch.float32)  # its experts' grouped matmul takes float32 only
    layer = model.model.layers[0].linear_attn
    with torch.no_grad():  # decays away from 1, so that the gate is checked
        layer.A_log.uniform_(-1, 1)
    x = torch.randn(2, 13, 16)
    op = gated_deltanet_operator(layer, x)
    assert op.batch_shape == (2, 4) and op.multiplicity == 4 and op.state_size == 8  # 2 key heads serve 4 value heads
    values = gated_deltanet_streams(layer, x)[2].transpose(1, 2)  # (B, Hv, L, d_v)
    out = layer(x)
    scale = out.abs().max().item()
    # the layer's kernel runs in float32, chunked: agreement to float32 precision
    assert scale > 0 and torch.allclose(gated_deltanet_readout(layer, x, op.materialize() @ values), out,
                                        atol=1e-5 * scale, rtol=1e-4)
    reports = ess_reg.measure(model, torch.randint(1, 32, (2, 12)), kind="tolerance")
    assert set(reports) == {"model.layers.0.linear_attn", "model.layers.1.self_attn"}
    assert torch.all(reports["model.layers.0.linear_attn"].ess.values <= 8 + 1e-4)  # ESS <= TSS (d_k = 8)


def test_the_coverage_page_is_the_registry_and_names_real_tests():
    from pathlib import Path

    from ess_reg.adapters.hf import FAMILIES, coverage_table

    root = Path(__file__).resolve().parents[2]
    assert coverage_table() in (root / "docs" / "coverage.md").read_text()
    here = Path(__file__).read_text()
    for family in FAMILIES:
        path, test = family.tested.split("::")
        assert path == "tests/core/test_adapters_hf.py" and f"def {test}(" in here, family.tested


def test_lfm2_short_convolution_is_measured_as_its_gated_toeplitz_operator():
    from ess_reg.adapters.hf_conv import short_conv_operator, short_conv_readout, short_conv_streams

    torch.manual_seed(0)
    config = transformers.Lfm2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=2, conv_L_cache=3, conv_bias=True,
                                     layer_types=["conv", "full_attention"], attn_implementation="eager")
    model = transformers.Lfm2ForCausalLM(config).double().eval()
    layer = model.model.layers[0].conv
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    op = short_conv_operator(layer, x)
    assert op.batch_shape == (2, 16)
    y = (op.materialize() @ short_conv_streams(layer, x)[2].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(short_conv_readout(layer, x, y), layer(x), atol=1e-12, rtol=1e-10)
    reports = ess_reg.measure(model, torch.randint(1, 32, (2, 12)), kind="tolerance")
    conv = reports["model.layers.0.conv"]
    # a state of K - 1 = 2 past inputs: the reach is min(i, L - i, 2), and random weights attain it
    assert torch.equal(conv.reach.double(),
                       torch.clamp(torch.minimum(conv.ess.indices, 12 - conv.ess.indices), max=2).double())
    assert torch.equal(conv.ess.values.amax(dim=(0, 1)).round().double(), conv.reach.double())


def test_recurrent_gemma_s_rg_lru_is_measured_as_its_diagonal_recurrence():
    from ess_reg.adapters.hf_rglru import rglru_operator

    torch.manual_seed(0)
    config = transformers.RecurrentGemmaConfig(vocab_size=32, hidden_size=16, lru_width=16, intermediate_size=32,
                                               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                               head_dim=8, attention_window_size=8,
                                               block_types=["recurrent", "attention"], attn_implementation="eager")
    model = transformers.RecurrentGemmaForCausalLM(config).double().eval()
    layer = model.model.layers[0].temporal_block.rg_lru
    u = torch.randn(2, 13, 16, dtype=torch.float64)
    positions = torch.tensor([list(range(13)), list(range(6)) + list(range(7))])  # the second holds two documents
    op = rglru_operator(layer, u, positions)
    assert op.batch_shape == (2, 16) and op.state_size == 1
    y = (op.materialize() @ u.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)
    layer.recurrent_states = None
    torch.testing.assert_close(y, layer(u, positions), atol=1e-6, rtol=1e-5)  # its scan accumulates in float32
    assert torch.all(op.materialize()[1, :, 6:, :6] == 0)  # nothing crosses the document boundary
    reports = ess_reg.measure(model, torch.randint(1, 32, (2, 24)), kind="tolerance", ess_options={"tol": 1e-9})
    assert {"model.layers.0.temporal_block.rg_lru", "model.layers.1.temporal_block"} <= set(reports)
    assert torch.all(reports["model.layers.0.temporal_block.rg_lru"].ess.values <= 1 + 1e-9)  # one state
    local = reports["model.layers.1.temporal_block"]  # its local attention: a window of 8
    assert local.reach.max() == 7 and torch.all(local.ess.values.amax(dim=(0, 1)) <= local.reach + 1e-9)


def test_minimax_lightning_attention_is_measured_as_decayed_linear_attention():
    from ess_reg.adapters.hf_lightning import lightning_operator, lightning_readout, lightning_streams

    torch.manual_seed(0)
    config = transformers.MiniMaxConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, head_dim=8, block_size=4,
                                        layer_types=["linear_attention", "full_attention"], num_local_experts=2,
                                        num_experts_per_tok=1, attn_implementation="eager")
    model = transformers.MiniMaxForCausalLM(config).float().eval()  # its experts' grouped matmul: float32 only
    layer = model.model.layers[0].self_attn
    x = torch.randn(2, 11, 16)  # 11 tokens in blocks of 4: the layer's blocked computation is crossed
    op = lightning_operator(layer, x)
    assert op.batch_shape == (2, 2) and op.state_size == 8 and op.multiplicity == 8
    y = op.materialize() @ list(lightning_streams(layer, x))[2]
    out = layer(x, None, None)[0]
    torch.testing.assert_close(lightning_readout(layer, x, y), out, atol=1e-5, rtol=1e-4)
    reports = ess_reg.measure(model, torch.randint(1, 32, (2, 12)), kind="tolerance")
    assert {"model.layers.0.self_attn", "model.layers.1.self_attn"} <= set(reports)
    assert torch.all(reports["model.layers.0.self_attn"].ess.values <= 8 + 1e-4)  # ESS <= TSS (head_dim)


def test_rwkv_wkv_is_measured_as_the_recurrence_it_applies():
    from ess_reg.adapters.hf_rwkv import rwkv_operator, rwkv_readout, rwkv_streams

    torch.manual_seed(0)
    config = transformers.RwkvConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2, attention_hidden_size=16,
                                     intermediate_size=32, context_length=64)
    model = transformers.RwkvForCausalLM(config).double().eval()
    layer = model.rwkv.blocks[0].attention
    with torch.no_grad():  # decays and bonuses of several sizes, not the initial pattern alone
        layer.time_decay.copy_(torch.linspace(-3, 1, 16, dtype=torch.float64))
        layer.time_first.copy_(torch.linspace(-1, 2, 16, dtype=torch.float64))
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    op = rwkv_operator(layer, x)
    assert op.batch_shape == (2, 16) and op.state_size == 1
    receptance, k, v = rwkv_streams(layer, x)
    # The definition, written out as a double sum in float64 (an independent reference).
    w, u = torch.exp(layer.time_decay), layer.time_first
    wkv = torch.empty_like(v)
    for t in range(13):
        weights = torch.exp(-(t - 1 - torch.arange(t, dtype=torch.float64))[None, :, None] * w + k[:, :t])
        bonus = torch.exp(u + k[:, t])
        wkv[:, t] = ((weights * v[:, :t]).sum(1) + bonus * v[:, t]) / (weights.sum(1) + bonus)
    y = op.materialize() @ v.transpose(1, 2).unsqueeze(-1)
    torch.testing.assert_close(rwkv_readout(layer, x, y), layer.output(receptance * wkv), atol=1e-10, rtol=1e-10)
    with torch.no_grad():  # the layer's own forward accumulates in float32
        torch.testing.assert_close(rwkv_readout(layer, x, y), layer(x)[0], atol=1e-6, rtol=1e-5)
    reports = ess_reg.measure(model, torch.randint(1, 32, (2, 24)), kind="tolerance", ess_options={"tol": 1e-9})
    assert list(reports) == ["rwkv.blocks.0.attention", "rwkv.blocks.1.attention"]  # every WKV, nothing else
    for report in reports.values():  # one state per channel, and random weights use it
        assert torch.all(report.ess.values <= report.reach + 1e-9) and report.reach.max() == 1
        assert torch.all(report.ess.values.amax(dim=(0, 1)) == 1)


def test_xlstm_mlstm_is_measured_as_the_gated_linear_attention_it_applies():
    from ess_reg.adapters.hf_xlstm import mlstm_operator, mlstm_readout, mlstm_streams

    torch.manual_seed(0)
    config = transformers.xLSTMConfig(vocab_size=32, hidden_size=16, num_heads=2, num_hidden_layers=2, chunk_size=4,
                                      autocast_kernel_dtype="float32", inference_state_dtype="float32")
    model = transformers.xLSTMForCausalLM(config).float().eval()
    layer = model.backbone.blocks[0].mlstm_layer
    with torch.no_grad():  # strong input gates, so that the normalizer |q . n| passes 1 and divides
        layer.igate_preact.bias.fill_(4.0)
    x = torch.randn(2, 11, 16)  # 11 steps in chunks of 4: the chunkwise kernel, then the sequence one
    op = mlstm_operator(layer, x)
    assert op.batch_shape == (2, 2) and op.state_size == 4 and op.multiplicity == 8
    q, k, v, i, f, _ = mlstm_streams(layer, x)
    dot = torch.einsum("bhtd,bhsd->bhts", q * q.shape[-1] ** -0.5, i.exp().unsqueeze(-1) * k)
    assert dot.tril().sum(-1).abs().max() > 1  # the normalizer acts somewhere
    with torch.no_grad():
        torch.testing.assert_close(mlstm_readout(layer, x, op.materialize() @ v), layer(x)[0], atol=1e-5, rtol=1e-4)
    probe = ess_reg.Probe(model, kind="tolerance")
    with probe.capture():  # its cache of a tiny config is misshapen in transformers: run without it
        model(torch.randint(1, 32, (2, 12)), use_cache=False)
    reports = probe.reports()
    assert list(reports) == ["backbone.blocks.0.mlstm_layer", "backbone.blocks.1.mlstm_layer"]
    assert all(torch.all(r.ess.values <= 4 + 1e-6) for r in reports.values())  # ESS <= TSS (d_qk)


def test_kimi_delta_attention_is_measured_as_the_delta_rule_with_gates_per_key_channel():
    from ess_reg.adapters.hf_kda import kda_operator, kda_readout, kda_streams

    torch.manual_seed(0)
    config = transformers.KimiLinearConfig(vocab_size=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                           hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                           linear_attn_config={"kda_layers": [1], "num_heads": 2, "head_dim": 8,
                                                               "short_conv_kernel_size": 4, "full_attn_layers": [2]},
                                           num_experts=2, num_experts_per_token=1, moe_intermediate_size=16,
                                           first_k_dense_replace=2, attn_implementation="eager")
    model = transformers.KimiLinearForCausalLM(config).double().eval()
    layer = model.model.layers[0].self_attn
    with torch.no_grad():  # gates of every strength, so that each key channel forgets at its own rate
        layer.forget_gate.dt_bias.copy_(torch.linspace(-6, 2, layer.forget_gate.dt_bias.numel()))
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    op = kda_operator(layer, x)
    assert op.batch_shape == (2, 2) and op.state_size == 8 and op.multiplicity == 8
    assert op.log_alpha.shape == (2, 2, 11, 8) and op.log_alpha.std(-1).min() > 0.01  # not one gate per head
    v = kda_streams(layer, x)[2].transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(kda_readout(layer, x, op.materialize() @ v), layer(x), atol=1e-6, rtol=1e-5)
    ids = torch.randint(3, 32, (2, 12))
    reports = ess_reg.measure(model, ids, kind="tolerance", ess_options={"tol": 1e-9})
    assert list(reports) == ["model.layers.0.self_attn", "model.layers.1.self_attn"]  # both kinds, none missed
    assert torch.all(reports["model.layers.0.self_attn"].ess.values <= 8 + 1e-9)  # ESS <= TSS (d_k)
    result = ess_reg.analyze(model, ids)
    assert not result.left_out
    assert result.layer_types == {"model.layers.0.self_attn": "KimiLinearDeltaAttention",
                                  "model.layers.1.self_attn": "KimiLinearAttention"}  # a hybrid's kinds read apart
    assert "KimiLinearDeltaAttention" in result.table().splitlines()[1]


def test_a_layer_named_like_attention_that_returns_no_probabilities_is_left_out_not_misread():
    model = torch.nn.ModuleList([FakeAttention(lambda h: None), FakeAttention(
        lambda h: torch.ones(h.shape[1], h.shape[1]).tril().div(torch.arange(1, h.shape[1] + 1)[:, None])
        .expand(h.shape[0], 2, -1, -1))])
    model.forward = lambda h: [layer(h)[0] for layer in model]
    x = torch.randn(2, 6, 4)
    probe = ess_reg.Probe(model)
    assert list(probe(x)) == ["1"]  # the layer that returns probabilities, measured
    assert "returns no attention probabilities under eager attention" in probe.left_out["0"]
    result = ess_reg.analyze(model, x)
    assert list(result.left_out) == ["0"] and "not measured" in result.table()
    with pytest.raises(ValueError, match="no layer of the model could be measured: 0"):
        ess_reg.Probe(model, layers=["0"])(x)


class FakeAttention(torch.nn.Module):
    """Named and placed like a transformers attention layer; returns ``(output, second)``."""

    def __init__(self, second):
        super().__init__()
        self.second = second
        self.config = type("Config", (), {"_attn_implementation": "eager"})()

    def forward(self, hidden_states):
        return hidden_states, self.second(hidden_states)


FakeAttention.__module__ = "transformers.models.fake.modeling_fake"


@pytest.mark.parametrize("second, reason", [
    (lambda h: torch.ones(h.shape[0], 2, h.shape[1], h.shape[1]) / h.shape[1], "weight above the diagonal"),
    (lambda h: -torch.ones(h.shape[0], 2, h.shape[1], h.shape[1]).tril(), "negative entries"),
    (lambda h: torch.zeros(h.shape[0], 2, 4, 4), "not (B, H, L, L) attention probabilities over its sequence"),
])
def test_an_attention_layer_whose_second_output_is_not_causal_probabilities_is_left_out(second, reason):
    uniform = FakeAttention(lambda h: torch.ones(h.shape[1], h.shape[1]).tril()
                            .div(torch.arange(1, h.shape[1] + 1)[:, None]).expand(h.shape[0], 2, -1, -1))
    model = torch.nn.ModuleList([FakeAttention(second), uniform])
    model.forward = lambda h: [layer(h)[0] for layer in model]
    probe = ess_reg.Probe(model, kind="tolerance")
    reports = probe(torch.randn(2, 6, 4))
    assert list(reports) == ["1"] and reason in probe.left_out["0"]
    assert torch.all(reports["1"].ess.values >= 1 - 1e-6)  # the uniform causal average: read, not left out
