"""The memory planner against what LMDeploy 0.18 really did on an H100 (../shared/gpu/README.md), and against
DESIGN.md's per-token formula for real model configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from webui.services.planner import (
    GPU_SIZES_MIB,
    MIB,
    PRESETS,
    ModelShape,
    PlanInput,
    error_percent,
    kv_bytes_per_token,
    plan,
    sweep,
)

H100_TOTAL = 81_559 * MIB
IDLE = 480 * MIB  # used before each start on that card
# (fraction, policy) → (MiB used on the card once READY, num_gpu_blocks from the engine's log)
MEASURED = {(0.8, 0): (68_330, 256_839), (0.4, 0): (34_844, 128_419), (0.4, 8): (36_142, 249_056),
            (0.4, 4): (38_666, 483_461)}


@pytest.fixture
def tiny_shape(tiny_model_dir: Path) -> ModelShape:
    """The same shape as the model measured on the H100 (tests/tiny_model.py builds it)."""
    return ModelShape.from_config(json.loads((tiny_model_dir / "config.json").read_text()))


def test_reads_the_tiny_models_config(tiny_shape: ModelShape) -> None:
    assert (tiny_shape.layers, tiny_shape.hidden, tiny_shape.heads, tiny_shape.kv_heads, tiny_shape.head_dim,
            tiny_shape.vocab, tiny_shape.tied_embeddings) == (4, 512, 4, 2, 128, 4096, False)
    assert kv_bytes_per_token(tiny_shape, 0) == 4096  # 4 × 2 × 2 × 128 × 2, as the GPU notes say
    assert 32 * MIB < tiny_shape.weight_bytes() < 34 * MIB  # 33 MB on disk


# On an H200 at fraction 0.4 (num_gpu_blocks from the engine's log): policy → blocks of 64 tokens.
H200_BLOCKS = {0: 227_742, 16: 455_485, 42: 1_143_178}


@pytest.mark.parametrize(("fraction", "policy"), sorted(MEASURED))
def test_predictions_are_within_5_percent_of_the_h100(tiny_shape: ModelShape, fraction: float, policy: int) -> None:
    used_mib, blocks = MEASURED[(fraction, policy)]
    predicted = plan(PlanInput(tiny_shape, H100_TOTAL, cache_max_entry_count=fraction, quant_policy=policy,
                               other_used_bytes=IDLE))
    assert abs(error_percent(predicted.total_bytes / MIB, used_mib)) < 5
    assert abs(error_percent(predicted.blocks, blocks)) < 5
    assert predicted.fits and predicted.tokens == predicted.blocks * 64


def test_kv_quantization_keeps_memory_and_multiplies_tokens(tiny_shape: ModelShape) -> None:
    base = PlanInput(tiny_shape, H100_TOTAL, cache_max_entry_count=0.4, other_used_bytes=IDLE)
    none, int8, int4 = (plan(PlanInput(**{**base.__dict__, "quant_policy": p})) for p in (0, 8, 4))
    assert none.kv_pool_bytes == pytest.approx(int8.kv_pool_bytes, rel=0.001)
    assert none.kv_pool_bytes == pytest.approx(int4.kv_pool_bytes, rel=0.001)
    assert int8.tokens / none.tokens == pytest.approx(249_056 / 128_419, rel=0.01)  # ×1.94 measured
    assert int4.tokens / none.tokens == pytest.approx(483_461 / 128_419, rel=0.01)  # ×3.76 measured


@pytest.mark.parametrize("policy", [16, 42])
def test_fp8_and_turbo_quant_block_ratios_match_the_h200(tiny_shape: ModelShape, policy: int) -> None:
    h200 = GPU_SIZES_MIB["141 GB (H200)"] * MIB
    base, other = (plan(PlanInput(tiny_shape, h200, cache_max_entry_count=0.4, quant_policy=p, other_used_bytes=IDLE))
                   for p in (0, policy))
    assert other.blocks / base.blocks == pytest.approx(H200_BLOCKS[policy] / H200_BLOCKS[0], rel=0.01)
    assert other.kv_pool_bytes == pytest.approx(base.kv_pool_bytes, rel=0.001)


def test_turbo_quant_layout(tiny_shape: ModelShape) -> None:
    # Per layer, KV head and token: K 4-bit (64 B) + two fp16 scalars, V 2-bit (32 B) + one: 102 B against 512 B.
    assert kv_bytes_per_token(tiny_shape, 42) == 4 * 2 * (64 + 4 + 32 + 2)
    assert kv_bytes_per_token(tiny_shape, 0) / kv_bytes_per_token(tiny_shape, 42) == pytest.approx(5.02, abs=0.005)
    qwen = ModelShape.from_config(PRESETS["Qwen2.5 7B"])  # 4 KV heads
    assert kv_bytes_per_token(qwen, 42, tp=2) == 28 * 2 * (64 + 4 + 32 + 2)
    # One head a GPU: V's scalars (64 tokens × 2 B = 128 B a block) are padded to 256 B, as LMDeploy allocates them.
    assert kv_bytes_per_token(qwen, 42, tp=4) == 28 * (64 + 4 + 32 + 4)


def test_the_chart_adds_the_chosen_policy(tiny_shape: ModelShape) -> None:
    rows = sweep(PlanInput(tiny_shape, H100_TOTAL, quant_policy=42, other_used_bytes=IDLE))
    assert sorted({r["policy"] for r in rows}) == [0, 4, 8, 42]
    assert {r["policy"] for r in sweep(PlanInput(tiny_shape, H100_TOTAL, quant_policy=8))} == {0, 8, 4}


@pytest.mark.parametrize(("name", "fp16_per_token"), [
    ("InternLM2.5 7B", 32 * 2 * 8 * 128 * 2), ("Qwen2.5 7B", 28 * 2 * 4 * 128 * 2),
    ("Llama 3 8B", 32 * 2 * 8 * 128 * 2), ("InternLM2.5 1.8B", 24 * 2 * 8 * 128 * 2)])
def test_bytes_per_token_follow_the_design_formula(name: str, fp16_per_token: int) -> None:
    shape = ModelShape.from_config(PRESETS[name])
    layers, kv_heads = shape.layers, shape.kv_heads
    assert kv_bytes_per_token(shape, 0) == fp16_per_token
    assert kv_bytes_per_token(shape, 8) == layers * 2 * kv_heads * (128 + 4)
    assert kv_bytes_per_token(shape, 4) == layers * 2 * kv_heads * (64 + 4)
    assert kv_bytes_per_token(shape, 8, tp=2) == kv_bytes_per_token(shape, 8) / 2


def test_real_model_sizes_and_the_24_gb_slice() -> None:
    internlm7b = ModelShape.from_config(PRESETS["InternLM2.5 7B"])
    assert 7.5e9 < internlm7b.weight_bytes() / 2 < 7.9e9  # 7.74B parameters
    llama = ModelShape.from_config(PRESETS["Llama 3 8B"])
    assert 7.9e9 < llama.weight_bytes() / 2 < 8.1e9  # 8.03B parameters
    slice_24 = GPU_SIZES_MIB["24 GB (A100 slice)"] * MIB
    fp16 = plan(PlanInput(internlm7b, slice_24, cache_max_entry_count=0.4, session_len=32768))
    awq = plan(PlanInput(internlm7b, slice_24, cache_max_entry_count=0.4, awq=True, awq_group_size=128,
                         session_len=32768))
    # The camp's setting: a 7B in fp16 at 0.4 has no room for one 32k session; the AWQ model has.
    assert not fp16.fits and fp16.problems == ("no_full_session",) and fp16.sessions == 0
    assert awq.fits and awq.sessions >= 1
    assert plan(PlanInput(internlm7b, slice_24, cache_max_entry_count=0.4, session_len=8192)).fits
    assert awq.weights_bytes < fp16.weights_bytes / 3  # W4A16 with group 128: ~0.27 of fp16 for the linears
    assert awq.tokens > fp16.tokens  # more free memory after smaller weights → a bigger pool
    too_big = plan(PlanInput(ModelShape.from_config({**PRESETS["Llama 3 8B"], "num_hidden_layers": 96}), slice_24))
    assert not too_big.fits and "weights_do_not_fit" in too_big.problems


def test_an_awq_checkpoint_is_read_as_such() -> None:
    config = {**PRESETS["Qwen2.5 7B"], "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 64}}
    shape = ModelShape.from_config(config)
    assert shape.awq_group_size == 64 and shape.qkv_bias
    assert shape.weight_bytes() < ModelShape.from_config(PRESETS["Qwen2.5 7B"]).weight_bytes() / 2.5


def test_sweep_rises_with_the_fraction_for_each_policy(tiny_shape: ModelShape) -> None:
    rows = sweep(PlanInput(tiny_shape, H100_TOTAL, other_used_bytes=IDLE))
    for policy in (0, 8, 4):
        mine = [r for r in rows if r["policy"] == policy]
        assert [r["fraction"] for r in mine] == sorted(r["fraction"] for r in mine)
        pairs = zip(mine, mine[1:], strict=False)
        assert all(a["tokens"] < b["tokens"] and a["total_mib"] < b["total_mib"] for a, b in pairs)
    at = {(r["policy"], r["fraction"]): r for r in rows}
    assert at[(4, 0.4)]["tokens"] > 3.5 * at[(0, 0.4)]["tokens"]
    assert at[(4, 0.4)]["total_mib"] < 1.2 * at[(0, 0.4)]["total_mib"]


def test_bad_inputs_are_problems_not_exceptions(tiny_shape: ModelShape) -> None:
    assert "fraction" in plan(PlanInput(tiny_shape, H100_TOTAL, cache_max_entry_count=1.5)).problems
    assert "tp" in plan(PlanInput(tiny_shape, H100_TOTAL, tp=3)).problems
    long = plan(PlanInput(tiny_shape, 2048 * MIB, cache_max_entry_count=0.01, session_len=10_000_000))
    assert "no_full_session" in long.problems and long.sessions == 0
