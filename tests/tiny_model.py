"""Build a tiny random-weight Llama/Qwen2 chat model folder offline (about 5 s, 33 MB) for tests and GPU checks.

Its replies are gibberish, but everything LMDeploy does with it is real: loading, AWQ (every dimension is a
multiple of 128), KV cache, streaming. The tokenizer is a small byte-level BPE trained on text that ships
with CPython (pydoc_data.topics), so nothing is downloaded. Loads under transformers 4.57 and 5.x.

Usage: python -m tests.tiny_model OUT_DIR [llama|qwen2]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]

# ChatML with OpenAI-style tools (the Qwen2.5/Hermes <tool_call>{json}</tool_call> convention).
CHAT_TEMPLATE = r"""{%- if tools %}<|im_start|>system
{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% else %}You are a helpful assistant.{% endif %}
{{ '\n\n' }}# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{%- for tool in tools %}
{{ '\n' }}{{ tool | tojson }}
{%- endfor %}
{{ '\n' }}</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% elif messages[0]['role'] != 'system' %}<|im_start|>system
You are a helpful assistant.<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message['role'] == 'system' %}{% if not tools %}<|im_start|>system
{{ message['content'] }}<|im_end|>
{% endif %}
{%- elif message['role'] == 'assistant' and message.get('tool_calls') %}<|im_start|>assistant
{% if message['content'] %}{{ message['content'] }}
{% endif %}
{%- for tc in message['tool_calls'] %}{% set f = tc['function'] if tc.get('function') else tc %}<tool_call>
{"name": "{{ f['name'] }}", "arguments": {{ f['arguments'] if f['arguments'] is string else f['arguments'] | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message['role'] == 'tool' %}<|im_start|>user
<tool_response>
{{ message['content'] }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def build_tiny_model(out: Path, arch: str = "llama", layers: int = 4) -> Path:
    """Write config.json, model.safetensors, tokenizer files and a chat template into `out`.

    Nothing here asks a hub; `HF_HUB_OFFLINE` is not set for the caller, since `huggingface_hub` reads it once
    at import and the download tests in the same process talk to a local hub endpoint."""
    from pydoc_data.topics import topics

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(list(topics.values()), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=None, eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token=None)
    tok.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 4096

    vocab = (len(tok) + 63) // 64 * 64
    common = dict(vocab_size=vocab, hidden_size=512, intermediate_size=1536, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=128, max_position_embeddings=4096,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0,
                  bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
                  eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                  pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"))
    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    cfg = config_cls(**common)
    torch.manual_seed(0)
    model = model_cls(cfg).to(torch.float16)
    model.generation_config = GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                                               pad_token_id=cfg.pad_token_id, max_new_tokens=32)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    # Older loaders read plain rope_theta / torch_dtype and the template from tokenizer_config.json.
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    config.setdefault("rope_theta", common["rope_theta"])
    config.setdefault("torch_dtype", "float16")
    config_path.write_text(json.dumps(config, indent=2))
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["chat_template"] = CHAT_TEMPLATE
    tc["model_input_names"] = ["input_ids", "attention_mask"]
    if isinstance(tc.get("extra_special_tokens"), list):
        tc["additional_special_tokens"] = tc.pop("extra_special_tokens")
    if tc.get("tokenizer_class") == "TokenizersBackend":
        tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc_path.write_text(json.dumps(tc, indent=2))
    return out


if __name__ == "__main__":
    target = build_tiny_model(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "llama")
    print(target, sorted(os.listdir(target)))
