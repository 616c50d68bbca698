"""A causal LM's export loads in optimum's ORTModelForCausalLM and generates what torch generates. Two steps in two
venvs (the export traces transformers 5.x's cache; optimum's ONNX backend installs only with transformers < 4.58):

    .venv/bin/python benchmarks/ecosystem_lm.py export DIR       # a tiny random Gemma 3 (MiniLM's tokenizer), fp32
                                                                 # and narrowed + int8 exports, torch's greedy tokens
    .venv-eco/bin/python benchmarks/ecosystem_lm.py check DIR    # optimum's greedy tokens from each export

`make ecosystem` runs both. The fp32 export must give torch's tokens exactly; the int8 one is reported (ORT's int8
may flip a near tie of a random model).
"""

import json
import sys
from pathlib import Path

import torch

SENTENCES = ["a man is playing a guitar on the street", "the cat sat"]
NEW_TOKENS = 8


def left_batch(tokenizer):
    return dict(tokenizer(SENTENCES, padding=True, return_tensors="pt", padding_side="left",
                          return_token_type_ids=False))


def export(out: Path) -> None:
    import slimformer
    from slimformer.runtime.export import export as run_export
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    minilm = slimformer.load()
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=64, intermediate_size=96,
                           num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                           max_position_embeddings=256, sliding_window=4,
                           layer_types=["sliding_attention", "full_attention"] * 2)
    Gemma3ForCausalLM(cfg).eval().save_pretrained(out / "tiny-gemma")
    minilm.tokenizer.save_pretrained(out / "tiny-gemma")
    base = slimformer.load(out / "tiny-gemma")
    small = slimformer.compress(base, "layers(keep=3)+heads(keep=0.5)+int8", calib=SENTENCES * 20)
    want = {}
    for name, model, int8 in (("fp32", base, False), ("narrowed-int8", small, True)):
        run_export(model, out / name, int8=int8, force=True)
        with torch.inference_mode():
            want[name] = model.net.generate(**left_batch(model.tokenizer), max_new_tokens=NEW_TOKENS,
                                            do_sample=False).tolist()
    (out / "torch_tokens.json").write_text(json.dumps(want))
    print(f"wrote {out}")


def check(out: Path) -> None:
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    want = json.loads((out / "torch_tokens.json").read_text())
    for name, tokens in want.items():
        model = ORTModelForCausalLM.from_pretrained(out / name)
        got = model.generate(**left_batch(AutoTokenizer.from_pretrained(out / name)), max_new_tokens=NEW_TOKENS,
                             do_sample=False).tolist()
        same = sum(a == b for r, s in zip(got, tokens) for a, b in zip(r, s)) / sum(len(r) for r in tokens)
        print(f"{name}: optimum ORTModelForCausalLM greedy tokens = torch's: {got == tokens} ({same:.0%} of tokens)")
        if name == "fp32" and got != tokens:
            raise SystemExit("the fp32 export generates other tokens in optimum than in torch")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("export", "check"):
        raise SystemExit(__doc__)
    (export if sys.argv[1] == "export" else check)(Path(sys.argv[2]))
