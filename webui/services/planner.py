"""GPU memory before launch: weights, the KV pool, bytes per token, tokens and sessions that fit.

Pure arithmetic from config.json. How LMDeploy 0.18 (pytorch engine) sizes its KV pool, as measured on an H100
(../shared/gpu/README.md; tests/test_planner.py holds those numbers):
- the pool is `cache_max_entry_count` × the memory that is free once the engine has loaded its weights
  (free = total − what other programs hold − the engine's CUDA context − weights/tp);
- it is cut into blocks of 64 tokens; a block holds, per layer, K and V of `kv_heads/tp` heads plus, for the
  quantized policies, a few scalars a head and token in the model's dtype (KV_LAYOUTS says which), each of these
  tensors padded to 256 bytes (lmdeploy/pytorch/engine/cache_engine/schema.py, CacheDesc and build_*_cache_desc);
- besides the pool the engine holds its context and about 11 KB of bookkeeping per block.
So KV int8/int4 leave memory where it was and multiply the tokens: the pool is a fraction of free memory,
whatever one token costs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

MIB = 1 << 20
BLOCK_TOKENS = 64
# Fitted to the H100 runs: context before the pool is allocated, and the per-block bookkeeping after.
ENGINE_CONTEXT_BYTES = 785 * MIB
PER_BLOCK_OVERHEAD_BYTES = 11_288
# Each per-block cache tensor is padded to this many bytes (CacheDesc.alignment in LMDeploy 0.18).
KV_ALIGN_BYTES = 256
# Scales, zeros and norms are stored in the model's dtype (fp16 / bf16).
KV_SCALAR_BYTES = 2


@dataclass(frozen=True)
class KvLayout:
    """What one token stores per layer and KV head under a quant policy: bits a K and a V value, and how many
    scalars sit beside K and beside V (LMDeploy 0.18 pytorch engine, cache_engine/schema.py)."""

    k_bits: int
    v_bits: int
    k_scalars: int = 0
    v_scalars: int = 0

    def tensor_bytes(self, head_dim: int) -> tuple[float, ...]:
        """Bytes a token and head in each cache tensor: K, V, then the K and V scalars where there are any."""
        return tuple(b for b in (head_dim * self.k_bits / 8, head_dim * self.v_bits / 8,
                                 self.k_scalars * KV_SCALAR_BYTES, self.v_scalars * KV_SCALAR_BYTES) if b)


# quant policy → layout. int8/int4 keep a scale and a zero point for K and for V; fp8 / fp8_e5m2 (16, 17) keep
# none (one scale a tensor); TurboQuant (42) packs K in 4 bits (3-bit codebook + 1 QJL sign bit) with two scalars
# and V in 2 bits with one (the norm).
KV_LAYOUTS: Mapping[int, KvLayout] = MappingProxyType({
    0: KvLayout(16, 16), 8: KvLayout(8, 8, 2, 2), 4: KvLayout(4, 4, 2, 2), 16: KvLayout(8, 8), 17: KvLayout(8, 8),
    42: KvLayout(4, 2, 2, 1),
})
# Policies every backend has: the planner's chart always draws them (and the chosen one if it is another).
SWEEP_POLICIES = (0, 8, 4)
# GPU memory as NVML reports it (MiB), for the sizes people plan for.
GPU_SIZES_MIB = MappingProxyType({"24 GB (A100 slice)": 24_576, "40 GB (A100 40G)": 40_960, "80 GB (H100 80G)": 81_559,
                 "141 GB (H200)": 143_771})
# config.json essentials of models the console's users run (from their published configs).
PRESETS: Mapping[str, dict[str, Any]] = MappingProxyType({
    "InternLM2.5 1.8B": {"architectures": ["InternLM2ForCausalLM"], "num_hidden_layers": 24, "hidden_size": 2048,
                         "intermediate_size": 8192, "num_attention_heads": 16, "num_key_value_heads": 8,
                         "vocab_size": 92544, "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
    "InternLM2.5 7B": {"architectures": ["InternLM2ForCausalLM"], "num_hidden_layers": 32, "hidden_size": 4096,
                       "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
                       "vocab_size": 92544, "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
    "Qwen2.5 7B": {"architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 28, "hidden_size": 3584,
                   "intermediate_size": 18944, "num_attention_heads": 28, "num_key_value_heads": 4,
                   "vocab_size": 152064, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
                   "attention_bias": True},
    "Llama 3 8B": {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 32, "hidden_size": 4096,
                   "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8,
                   "vocab_size": 128256, "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
})


@dataclass(frozen=True)
class ModelShape:
    """What the memory of a decoder-only transformer depends on."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool = False
    awq_group_size: int = 0  # > 0: the checkpoint is already AWQ 4-bit with this group size
    experts: int = 1  # MoE: each expert has its own MLP

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """Read config.json (InternLM2, Qwen2, Llama and the like; text_config for multimodal ones)."""
        config = config.get("text_config", config) if "num_hidden_layers" not in config else config
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        quant = config.get("quantization_config") or {}
        awq = str(quant.get("quant_method", "")).lower() == "awq"
        return cls(
            layers=int(config["num_hidden_layers"]),
            hidden=hidden,
            intermediate=int(config.get("intermediate_size") or 4 * hidden),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab=int(config["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=bool(config.get("attention_bias") or config.get("qkv_bias")
                          or str(config.get("model_type", "")).startswith("qwen2")),
            awq_group_size=int(quant.get("group_size") or quant.get("q_group_size") or 128) if awq else 0,
            experts=int(config.get("num_local_experts") or config.get("num_experts") or 1),
        )

    def linear_params(self) -> int:
        """Parameters of the layers AWQ quantizes (attention and MLP projections)."""
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        return self.layers * (attention + 3 * self.hidden * self.intermediate * self.experts)

    def params(self) -> int:
        return self.linear_params() + self.other_params()

    def other_params(self) -> int:
        """Embeddings, lm_head, norms and biases: kept in 16 bits by AWQ."""
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        norms = self.layers * 2 * self.hidden + self.hidden
        bias = self.layers * self.head_dim * (self.heads + 2 * self.kv_heads) if self.qkv_bias else 0
        return embeddings + norms + bias

    def weight_bytes(self, awq_group_size: int = 0) -> int:
        """16-bit weights, or AWQ 4-bit ones: half a byte a weight plus a 16-bit scale and a 4-bit zero a group."""
        group = awq_group_size or self.awq_group_size
        linear = self.linear_params()
        per_weight = 0.5 + 2.5 / group if group else 2.0
        return int(linear * per_weight + self.other_params() * 2)


def kv_bytes_per_token(shape: ModelShape, quant_policy: int, tp: int = 1) -> float:
    """KV bytes a token on one GPU: layers × Σ tensors (64 tokens × kv_heads/tp × bytes, padded to 256) / 64.

    Without padding this is DESIGN.md's layers × 2 × kv_heads/tp × (head_dim × bits/8 + 4 if int8/int4).
    """
    heads = shape.kv_heads / tp
    block = sum(math.ceil(BLOCK_TOKENS * heads * b / KV_ALIGN_BYTES) * KV_ALIGN_BYTES
                for b in KV_LAYOUTS[quant_policy].tensor_bytes(shape.head_dim))
    return shape.layers * block / BLOCK_TOKENS


@dataclass(frozen=True)
class PlanInput:
    """One launch to predict: the model, its weight format, the GPU, and the api_server's knobs."""

    shape: ModelShape
    gpu_total_bytes: int
    cache_max_entry_count: float = 0.8
    quant_policy: int = 0
    awq: bool = False
    awq_group_size: int = 128
    session_len: int = 4096
    max_batch_size: int = 128
    tp: int = 1
    other_used_bytes: int = 0  # memory other programs hold on the GPU before the launch


@dataclass(frozen=True)
class Plan:
    """Per GPU: predicted weights, KV pool, tokens and sessions that fit, and total memory in use."""

    weights_bytes: int
    context_bytes: int
    free_for_cache_bytes: int
    kv_pool_bytes: int
    kv_bytes_per_token: float
    blocks: int
    tokens: int
    sessions: int
    concurrent_sessions: int
    overhead_bytes: int
    total_bytes: int
    fits: bool
    problems: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, problems=list(self.problems))


def plan(spec: PlanInput) -> Plan:
    """Predict the memory of one api_server launch (per GPU when tp > 1)."""
    shape = spec.shape
    problems: list[str] = []
    if not 0 < spec.cache_max_entry_count < 1:
        problems.append("fraction")
    if spec.tp < 1 or shape.kv_heads % spec.tp and spec.tp % shape.kv_heads:
        problems.append("tp")
    group = spec.awq_group_size if spec.awq else shape.awq_group_size
    weights = shape.weight_bytes(group if (spec.awq or shape.awq_group_size) else 0) // max(spec.tp, 1)
    free = spec.gpu_total_bytes - spec.other_used_bytes - ENGINE_CONTEXT_BYTES - weights
    if free <= 0:
        problems.append("weights_do_not_fit")
    fraction = min(max(spec.cache_max_entry_count, 0.0), 1.0)
    pool = int(max(free, 0) * fraction)
    per_token = kv_bytes_per_token(shape, spec.quant_policy, max(spec.tp, 1))
    blocks = int(pool // (per_token * BLOCK_TOKENS)) if per_token else 0
    tokens = blocks * BLOCK_TOKENS
    overhead = blocks * PER_BLOCK_OVERHEAD_BYTES
    total = spec.other_used_bytes + ENGINE_CONTEXT_BYTES + weights + blocks * int(per_token * BLOCK_TOKENS) + overhead
    session_blocks = math.ceil(max(spec.session_len, 1) / BLOCK_TOKENS)
    sessions = blocks // session_blocks if session_blocks else 0
    if sessions < 1 and not problems:
        problems.append("no_full_session")
    return Plan(weights_bytes=weights, context_bytes=ENGINE_CONTEXT_BYTES, free_for_cache_bytes=max(free, 0),
                kv_pool_bytes=blocks * int(per_token * BLOCK_TOKENS), kv_bytes_per_token=per_token, blocks=blocks,
                tokens=tokens, sessions=sessions, concurrent_sessions=min(sessions, spec.max_batch_size),
                overhead_bytes=overhead, total_bytes=total, fits=not problems and total <= spec.gpu_total_bytes,
                problems=tuple(problems))


SWEEP_FRACTIONS = tuple(round(0.05 * i, 2) for i in range(1, 20))


def sweep(spec: PlanInput, fractions: tuple[float, ...] = SWEEP_FRACTIONS,
          policies: tuple[int, ...] = SWEEP_POLICIES) -> list[dict[str, Any]]:
    """Predicted total memory and token capacity against the fraction, for each KV policy (the planner chart).

    The spec's own policy is added when it is not among them (fp8, TurboQuant: PyTorch engine only).
    """
    if spec.quant_policy not in policies:
        policies = (*policies, spec.quant_policy)
    rows = []
    for policy in policies:
        for fraction in fractions:
            p = plan(replace(spec, quant_policy=policy, cache_max_entry_count=fraction))
            rows.append({"policy": policy, "fraction": fraction, "total_mib": p.total_bytes / MIB,
                         "tokens": p.tokens, "sessions": p.sessions})
    return rows


def error_percent(predicted: float, measured: float) -> float | None:
    """Signed error of a prediction, in percent of what was measured."""
    return (predicted - measured) / measured * 100 if measured else None
