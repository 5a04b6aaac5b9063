"""sparkctl.perf: config.json families, byte counts, the step model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sparkctl.perf.hardware import PRESETS, hardware
from sparkctl.perf.model_config import ConfigError, load_config, parse_model
from sparkctl.perf.predict import Scenario, decode_step, experts_read, predict, weight_bytes_per_node
from sparkctl.perf.quant import FORMATS, declared_format, plan_for

CONFIGS = Path(__file__).parent / "fixtures" / "model-configs"


def model(name: str):
    config, source = load_config(str(CONFIGS / f"{name}.json"))
    return parse_model(config, source)


# Published totals (model cards): the parser must land within 2% (vision towers and
# MTP heads are left out on purpose, the LM head is counted once when tied).
@pytest.mark.parametrize("name,family,total_b,active_b", [
    ("llama-3.1-8b", "llama", 8.03, 7.5),
    ("llama-3.3-70b", "llama", 70.55, 69.5),
    ("llama-3.2-3b", "llama", 3.21, 3.21),
    ("qwen2.5-7b", "qwen", 7.62, 7.07),
    ("qwen3-32b", "qwen", 32.8, 32.0),
    ("qwen3-30b-a3b", "qwen3-moe", 30.5, 3.03),
    ("qwen3-235b-a22b", "qwen3-moe", 235.0, 21.5),
    ("gpt-oss-120b", "gpt-oss", 116.8, 5.12),
    ("gpt-oss-20b", "gpt-oss", 20.9, 3.6),
    ("mixtral-8x7b", "mixtral", 46.7, 12.75),
    ("deepseek-v3", "deepseek", 671.0, 36.5),
    ("gemma-4-26b-a4b", "gemma", 25.2, 3.8),
    ("minimax-m2.5", "minimax", 228.7, 10.4),
    ("llama-4-scout", "llama4", 107.8, 16.1),
    ("qwen3-vl-32b", "qwen", 32.8, 32.0),
    ("qwen3-vl-30b-a3b", "qwen3-moe", 30.5, 3.03),
])
def test_every_family_parses_to_its_published_size(name, family, total_b, active_b):
    m = model(name)
    assert m.family == family
    assert m.total_params / 1e9 == pytest.approx(total_b, rel=0.02)
    assert m.active_params / 1e9 == pytest.approx(active_b, rel=0.02)


def test_llama_70b_kv_cache_per_token():
    # 80 layers x 8 KV heads x 128 x (K and V) elements = 160 KiB elements... in bf16 320 KiB/token
    assert model("llama-3.3-70b").kv_elements(1) == 80 * 8 * 128 * 2


def test_gpt_oss_sliding_layers_stop_growing():
    m = model("gpt-oss-120b")
    full_only = 18 * 8 * 64 * 2
    # past the 128-token window only the 18 full-attention layers grow
    assert m.kv_elements(10_000) - m.kv_elements(9_000) == full_only * 1000
    assert any("sliding window" in n for n in m.notes)


def test_gemma4_nested_text_config_mixed_head_sizes_and_window():
    m = model("gemma-4-26b-a4b")
    assert any("text_config" in n for n in m.notes)
    assert any("mixed head sizes" in n for n in m.notes)
    windows = {layer.window for layer in m.kv_layers}
    assert windows == {1024, None}
    assert m.moe is not None and m.moe.experts_per_token == 8


def test_deepseek_mla_cache_is_latent_and_replicated():
    m = model("deepseek-v3")
    assert m.kv_elements(1) == 61 * (512 + 64)
    assert all(layer.shared_across_tp for layer in m.kv_layers)
    assert m.moe.moe_layers == 58  # first_k_dense_replace = 3


def test_multimodal_wrapper_reads_the_language_model():
    m = model("qwen3-vl-32b")
    assert (m.num_layers, m.hidden_size) == (64, 5120)


@pytest.mark.parametrize("drop", ["num_hidden_layers", "hidden_size", "vocab_size", "num_attention_heads"])
def test_missing_key_is_named(drop):
    config, _ = load_config(str(CONFIGS / "llama-3.1-8b.json"))
    del config[drop]
    with pytest.raises(ConfigError, match=drop) as info:
        parse_model(config, "x.json")
    assert info.value.exit_code == 2


def test_missing_key_inside_text_config_names_the_nesting():
    config, _ = load_config(str(CONFIGS / "qwen3-vl-32b.json"))
    del config["text_config"]["intermediate_size"]
    with pytest.raises(ConfigError, match="text_config.intermediate_size"):
        parse_model(config, "x.json")


def test_unreadable_config(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError):
        load_config(str(tmp_path))


# ---------------------------------------------------------------- bytes
def test_bytes_per_param_include_scales():
    assert FORMATS["nvfp4"].bytes_per_param == pytest.approx(0.5625)
    assert FORMATS["mxfp4"].bytes_per_param == pytest.approx(0.53125)
    assert FORMATS["int4"].bytes_per_param == pytest.approx(0.5 + 2.5 / 128)
    assert FORMATS["fp8"].bytes_per_param == pytest.approx(1.0, abs=1e-3)


def test_gpt_oss_keeps_attention_and_lm_head_in_bf16():
    m = model("gpt-oss-120b")
    plan = plan_for(m, None)
    assert plan.weights.name == "mxfp4" and plan.source.startswith("config.json")
    assert plan.attention_16bit and plan.lm_head_16bit
    per_token = weight_bytes_per_node(m, plan, 1, 1, 1)
    expected = (m.attention_params + m.lm_head_params) * 2 + (
        m.dense_mlp_params + 4 * m.moe.params_per_expert * m.moe.moe_layers) * 0.53125
    assert per_token == pytest.approx(expected)
    assert per_token / 1e9 == pytest.approx(4.98, rel=0.02)
    all_linear = plan_for(m, "mxfp4", all_linear=True)
    assert weight_bytes_per_node(m, all_linear, 1, 1, 1) / 1e9 == pytest.approx(2.72, rel=0.02)


def test_llama70b_nvfp4_bytes_match_the_playbook_roofline():
    # NVIDIA/dgx-spark-playbooks#91: about 38.5 GB of NVFP4 weights plus 2.1 GB of BF16 LM head
    m = model("llama-3.3-70b")
    assert weight_bytes_per_node(m, plan_for(m, "nvfp4"), 1, 1, 1) / 1e9 == pytest.approx(40.6, rel=0.02)


def test_quant_flag_overrides_the_config():
    m = model("qwen3-235b-a22b-fp8")
    assert plan_for(m, None).weights.name == "fp8"
    assert plan_for(m, "nvfp4").weights.name == "nvfp4"
    assert plan_for(m, "bf16").weights.bytes_per_param == 2.0


@pytest.mark.parametrize("quant,expected", [
    ({"quant_method": "fp8"}, "fp8"), ({"quant_method": "mxfp4"}, "mxfp4"), ({"quant_method": "awq", "bits": 4}, "int4"),
    ({"quant_method": "gptq", "bits": 4}, "int4"), ({"quant_method": "modelopt", "quant_algo": "NVFP4"}, "nvfp4"),
    ({"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized"}, "nvfp4"), (None, None),
])
def test_declared_formats(quant, expected):
    assert declared_format(quant) == expected


# ---------------------------------------------------------------- the step model
def scenario(name="llama-3.1-8b", **kw):
    m = model(name)
    return Scenario(model=m, plan=plan_for(m, kw.pop("quant", None)), hardware=hardware(kw.pop("hw", "gb10")), **kw)


def test_tp_halves_weights_and_adds_two_allreduces_per_layer():
    one, two = decode_step(scenario("llama-3.3-70b"), 1), decode_step(scenario("llama-3.3-70b", tp=2), 1)
    assert two.weight_bytes == pytest.approx(one.weight_bytes / 2)
    assert two.communication_ms == pytest.approx(2 * 80 * 0.030, rel=0.05)
    assert one.communication_ms == 0


def test_allreduce_latency_grows_with_ring_hops_across_nodes():
    s = scenario("qwen3-32b")
    t2 = decode_step(replace(s, tp=2), 1).communication_ms
    t4 = decode_step(replace(s, tp=4), 1).communication_ms
    assert t4 == pytest.approx(3 * t2, rel=0.05)


def test_moe_reads_more_experts_as_the_batch_grows():
    m = model("gpt-oss-120b")
    assert experts_read(m, 1) == pytest.approx(4)
    assert experts_read(m, 8) == pytest.approx(128 * (1 - (124 / 128) ** 8))
    assert experts_read(m, 10_000) == pytest.approx(128)


def test_decode_is_memory_bound_and_prefill_compute_bound_on_gb10():
    p = predict(scenario(context=2048, quant="fp8"))
    assert p.step.bound == "memory"
    assert p.prefill.compute_ms > p.prefill.memory_ms
    assert p.ceiling_tok_s_per_user > p.decode_tok_s_per_user


def test_big_batches_become_compute_bound():
    assert decode_step(scenario(hw="t4", concurrency=4096, context=16), 4096).bound == "compute"


def test_overrides_change_the_prediction():
    fast = hardware("gb10", mem_bw_gbs=546)
    base = predict(scenario())
    faster = predict(replace(scenario(), hardware=fast))
    assert faster.step.weights_ms == pytest.approx(base.step.weights_ms / 2)
    peaks = hardware("gb10", tflops=50).tflops
    assert (peaks.bf16, peaks.fp8, peaks.fp4) == (50, 50, 50)
    assert hardware("a100-40gb").peak_tflops("fp4") == 312  # no FP4 or FP8 units: BF16 GEMMs


def test_every_preset_names_its_source():
    assert set(PRESETS) >= {"gb10", "h100", "h200", "a100-40gb", "a100-80gb", "l40s", "rtx4090", "rtx5090",
                            "rtx-pro-6000", "t4"}
    assert PRESETS["gb10"].mem_bw_gbs == 273
    assert all(p.source and p.calibration.basis for p in PRESETS.values())


def test_replicas_beat_tp_when_the_link_is_slow_for_the_bytes_saved():
    p = predict(scenario("llama-3.2-1b", tp=2, concurrency=64, allreduce_us=400.0))
    tp, rep = p.layouts
    assert rep.fits and rep.total > tp.total
    healthy = predict(scenario("llama-3.3-70b", tp=2, concurrency=1, quant="fp8"))
    assert healthy.layouts[0].per_user > healthy.layouts[1].per_user
    big = predict(scenario("llama-3.3-70b", tp=2))
    assert not big.layouts[1].fits


# Gemma 2 and 3 files often carry only `sliding_window`; the layer layout follows
# from the family (these are shape tests on minimal configs, not copies of real files).
GEMMA_BASE = {"num_hidden_layers": 12, "hidden_size": 1024, "vocab_size": 1000, "num_attention_heads": 8,
              "num_key_value_heads": 4, "head_dim": 256, "intermediate_size": 4096, "sliding_window": 512}


def test_gemma2_alternates_sliding_and_global_layers():
    m = parse_model(dict(GEMMA_BASE, model_type="gemma2"))
    assert [layer.window for layer in m.kv_layers[:4]] == [512, None, 512, None]


def test_gemma3_defaults_to_five_local_layers_then_a_global_one():
    m = parse_model({"model_type": "gemma3", "text_config": dict(GEMMA_BASE, model_type="gemma3_text")})
    assert [layer.window for layer in m.kv_layers[:6]] == [512] * 5 + [None]
    explicit = parse_model(dict(GEMMA_BASE, model_type="gemma3_text", sliding_window_pattern=2))
    assert [layer.window for layer in explicit.kv_layers[:2]] == [512, None]


def test_qwen36_hybrid_linear_attention_and_mixed_precision():
    m = model("qwen3.6-35b-a3b-nvfp4")
    assert m.family == "qwen3-hybrid"
    assert m.total_params / 1e9 == pytest.approx(34.6, rel=0.02) and m.active_params / 1e9 == pytest.approx(2.9, rel=0.03)
    # only the 10 full-attention layers grow a KV cache (2 KV heads x 256 x K and V)
    assert m.kv_elements(1) == 10 * 2 * 256 * 2
    linear = [layer for layer in m.kv_layers if layer.state_bytes]
    assert len(linear) == 30 and linear[0].state_bytes == 2 * 32 * 128 * 128 * 4
    plan = plan_for(m, None)
    assert (plan.weights.name, plan.attention.name, plan.lm_head.name) == ("nvfp4", "fp8", "nvfp4")
    assert "mixed precision" in plan.source
    assert plan_for(m, "bf16").attention.name == "bf16"  # --quant wins


def test_linear_attention_state_does_not_grow_with_context():
    s = scenario("qwen3.5-35b-a3b")
    short, long = decode_step(replace(s, context=1000), 1), decode_step(replace(s, context=2000), 1)
    full_layer_growth = 1000 * 10 * 2 * 256 * 2 * 2.0
    assert long.kv_bytes - short.kv_bytes == pytest.approx(full_layer_growth)


def test_layouts_the_model_does_not_cover_are_refused():
    with pytest.raises(ConfigError, match="Mamba"):
        parse_model(dict(GEMMA_BASE, model_type="nemotron_h", hybrid_override_pattern="M*M-"))
    with pytest.raises(ConfigError, match="mamba"):
        parse_model(dict(GEMMA_BASE, model_type="x", num_hidden_layers=2, layer_types=["mamba", "full_attention"]))


def test_kv_capacity_counts_tokens_not_the_linear_state():
    from sparkctl.perf.predict import memory_fit

    s = scenario("qwen3.5-35b-a3b")
    fit = memory_fit(s, 1, 1)
    per_token = 10 * 2 * 256 * 2 * 2.0
    assert fit.kv_cache_tokens == pytest.approx((fit.usable_gb_per_node - fit.weights_gb_per_node) * 1e9 / per_token, rel=0.01)


def test_pipeline_stages_do_not_speed_up_decode_when_memory_bound():
    tp1 = predict(scenario("llama-3.3-70b", quant="fp8"))
    pp2 = predict(scenario("llama-3.3-70b", quant="fp8", pp=2))
    # one token still passes every layer's weights, one stage after the other
    assert pp2.decode_tok_s_per_user == pytest.approx(tp1.decode_tok_s_per_user, rel=0.05)
    # with a microbatch per stage both nodes are busy, each reading its half twice:
    # the same tokens per second as one node, and replicas (when they fit) do better
    busy = predict(scenario("llama-3.3-70b", quant="fp8", pp=2, concurrency=8))
    one = predict(scenario("llama-3.3-70b", quant="fp8", concurrency=8))
    assert busy.decode_tok_s_total == pytest.approx(one.decode_tok_s_total, rel=0.05)
    assert busy.layouts[1].total > busy.layouts[0].total
