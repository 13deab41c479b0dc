"""Writes two tiny Llama checkpoints with Hugging Face transformers and HF's own logits for them (reference data for
HfReferenceTests). Run where torch + transformers + safetensors are installed:  OUT=dir python3 make_hf_reference.py
  llama-b: bf16 weights, tied embeddings, 3:1 GQA, llama3 rope scaling (original_max_position_embeddings 64, sequences
           up to 130 positions), rope_parameters form of config.json, eos list.
  llama-c: f16 weights, attention_bias + mlp_bias, linear rope scaling, head_dim != hidden/heads, 2 shards with
           model.safetensors.index.json, old top-level rope_theta / rope_scaling form of config.json.
Expected logits are float32 forwards (from_pretrained(dtype=float32)) of the bf16/f16 weights; `logits_bf16_N` is HF's bfloat16 forward."""
import json, os, shutil, tarfile
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM
from safetensors.torch import save_file

out = os.environ.get("OUT", ".")
work = "/tmp/hfref"
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
torch.manual_seed(20261128)
print("transformers", transformers.__version__, "torch", torch.__version__)


def randomize(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))


def split_in_two(d):
    """model.safetensors -> two shards + model.safetensors.index.json (as save_pretrained does for big models)."""
    from safetensors.torch import load_file
    single = os.path.join(d, "model.safetensors")
    tensors = load_file(single)
    names = sorted(tensors)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, half in enumerate(halves):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n].contiguous() for n in half}, os.path.join(d, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in half})
    json.dump({"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}, "weight_map": weight_map},
              open(os.path.join(d, "model.safetensors.index.json"), "w"), indent=2)
    os.remove(single)


def make(name, cfg, save_dtype, seq_lens, shard=None):
    model = LlamaForCausalLM(cfg)
    randomize(model)
    model = model.to(save_dtype).eval()
    d = os.path.join(work, name)
    model.save_pretrained(d)
    if shard:
        split_in_two(d)
    expected = {}
    with torch.no_grad():
        # Fresh loads, as a user would: model.to(bf16) above also rounded the inv_freq buffer, from_pretrained keeps it float32.
        bf16 = LlamaForCausalLM.from_pretrained(d, dtype=torch.bfloat16).eval()
        model = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        assert model.model.rotary_emb.inv_freq.dtype == torch.float32
        for n, t in enumerate(seq_lens):
            ids = torch.randint(0, cfg.vocab_size, (t,))
            expected[f"ids_{n}"] = ids
            expected[f"logits_{n}"] = model(ids[None]).logits[0].float().contiguous()
            expected[f"logits_bf16_{n}"] = bf16(ids[None]).logits[0].float().contiguous()
        prompt = torch.randint(0, cfg.vocab_size, (106,))
        gen = model.generate(prompt[None], attention_mask=torch.ones(1, 106, dtype=torch.long), max_new_tokens=24, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
        expected["greedy_prompt"] = prompt
        expected["greedy_continuation"] = gen[0, 106:].contiguous()
    save_file(expected, os.path.join(d, "expected.safetensors"))
    print(name, sorted(os.listdir(d)))
    print(open(os.path.join(d, "config.json")).read())
    return d


rope_b = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
cfg_b = LlamaConfig(vocab_size=384, hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=6,
                    num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5,
                    tie_word_embeddings=True, rope_parameters=rope_b, bos_token_id=1, eos_token_id=[2, 3])
make("llama-b", cfg_b, torch.bfloat16, [9, 130])

cfg_c = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, head_dim=24, max_position_embeddings=512, rms_norm_eps=1e-6,
                    tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
                    rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}, bos_token_id=1, eos_token_id=2)
d = make("llama-c", cfg_c, torch.float16, [17, 70], shard=True)
# rewrite llama-c's config.json in the older form: top-level rope_theta + rope_scaling
path = os.path.join(d, "config.json")
c = json.load(open(path))
c.pop("rope_parameters", None)
c["rope_theta"] = 10000.0
c["rope_scaling"] = {"type": "linear", "factor": 2.0}
json.dump(c, open(path, "w"), indent=2)

with tarfile.open(os.path.join(out, "hfref.tar"), "w") as tar:
    tar.add(work, arcname="hfref")
print("wrote", os.path.join(out, "hfref.tar"), os.path.getsize(os.path.join(out, "hfref.tar")))
