"""Recovery training: the compressed student learns from the uncompressed teacher on unlabeled text.

Loss per batch (real tokens only): 1 - cos(pooled student, pooled teacher) plus, for every student layer, the MSE of
its hidden states to the teacher layer it stands for, divided by the teacher's mean square so layers weigh alike
(layer map: identity, or the kept layers when layers were dropped); for a classifier plus the KL divergence of the
student's class distribution from the teacher's at temperature T, times T^2 (Hinton et al. 2015, "Distilling the
Knowledge in a Neural Network"), so the head is trained with the encoder; for a causal LM the same KL on every real
token's next-token distribution (over the kept tokens after `vocab`; 8 sentences a step by default: its logits are
vocabulary-wide). A speech model (Whisper) learns on its calibration clips: the MSE terms over the encoder's and the
decoder's blocks and the KL of every real decoder token's next-token distribution (no pooled term). Unlabeled text
(or speech) only: the teacher's outputs are the targets. AdamW, linear warm-up then linear decay over
the budget (steps, or minutes of wall clock), dynamic padding, no dropout, deterministic for a seed. With a
checkpoint folder, the run saves its state every CHECKPOINT_SECONDS (or longer, so saving takes at most a
1/SAVE_SHARE of the time) and a restarted run resumes from it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..arch import CAUSAL_LM, LAYER_STACK
from ..configs import Distill
from ..errors import RecipeError
from ..folder import atomic_folder
from ..speech import SPEECH, is_speech
from ..vision import is_image
from .calib import is_causal_lm
from .vocab import kept_tokens

CHECKPOINT_SECONDS = 30.0
# and at least this many times as long as the last save took: a checkpoint of Gemma 3 270M (weights and AdamW's two
# moments, 3.6 GB on disk) took 2-10 s here, which every 30 s would eat into a budget given in minutes
SAVE_SHARE = 20
WARMUP_STEPS = 50
MAX_LENGTH = 128
# items per step when the recipe does not say: a causal LM's logits are vocabulary-wide (Gemma 3: 262k per token), and
# a speech item is 30 s of audio: Whisper base with 32 clips a step made 4 steps in 10 CPU minutes, with 4 made 69
# (README, "Speech (Whisper base)")
BATCH_SIZE = {"other": 32, CAUSAL_LM: 8, SPEECH: 4}
# AdamW's peak rate when the recipe does not say: 3e-4 beat 1e-4 by 2 STS-B points on a low-rank MiniLM. On Gemma 3
# 270M (15 CPU minutes) the training loss rose at 1e-4 and fell at 3e-5: layers(keep=17) +10.6% / +9.6% perplexity,
# compensated prune(flops=0.9) +11.4% / +4.8% (3e-4: +19.0%; README, "Decoder LMs")
LR = {"other": 3e-4, CAUSAL_LM: 3e-5, SPEECH: 3e-4}


def layer_map(student, teacher, path: str | None = None) -> list[int]:
    """For each student block of the stack at `path` (default: the adapter's), the index of the teacher block whose
    output it should reproduce. `layers`' kept indices apply to the stack it drops from (Whisper: the decoder's)."""
    path = path or student.adapter.layers
    n_s = len(student.encoder.get_submodule(path))
    kept = next((s["kept_layers"] for s in reversed(student.manifest["steps"]) if "kept_layers" in s), None)
    if kept is not None and len(kept) == n_s and path == LAYER_STACK.get(student.model_type, student.adapter).layers:
        return list(kept)
    n_t = len(teacher.encoder.get_submodule(path))
    return [round((i + 1) * n_t / n_s) - 1 for i in range(n_s)]  # evenly spread when nothing better is known


def _forward(model, batch, grad: bool, real: torch.Tensor | None = None):
    """(pooled (B, H), per-block states [(B, T, H)], a head's logits (B, C) / (B, T, C) or None), through the net.
    A causal LM given `real` ((B, T) bool) runs its decoder, then `lm_head` on the real tokens' final states only:
    logits (N, V), so padding's vocabulary-wide rows (Gemma 3: 262k each) are never computed."""
    with torch.set_grad_enabled(grad):
        if real is None:
            out = model.net(**batch, output_hidden_states=True)
            logits = getattr(out, "logits", None)
        else:
            out = model.encoder(**batch, output_hidden_states=True)
            logits = model.net.get_output_embeddings()(out.last_hidden_state[real])  # (N, H) after the norm -> (N, V)
            cap = getattr(model.net.config, "final_logit_softcapping", None)  # as the net's own forward (Gemma 2)
            logits = logits if cap is None else torch.tanh(logits / cap) * cap
        states = out.hidden_states[1:]  # per block: (B, T, H)
        last = getattr(out, "last_hidden_state", None)  # a task model's output has no such field: its last block's
        last = states[-1] if last is None else last
        return model.pool(last, batch.get("attention_mask")), states, logits


def logit_kl(student: torch.Tensor, teacher: torch.Tensor, real: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) * T^2, the mean over sentences ((B, C) logits), or over the
    real tokens (real: (B, T) bool) of a token classifier's (B, T, C). T^2 keeps its gradients' scale as T varies."""
    if student.dim() == 3:  # per token: the real tokens' rows only, (N, C) (a causal LM's C is its vocabulary)
        student, teacher = student[real], teacher[real]
    log_t = F.log_softmax(teacher / temperature, -1)
    kl = (log_t.exp() * (log_t - F.log_softmax(student / temperature, -1))).sum(-1)  # (B,) or (N,)
    return kl.mean() * temperature ** 2


def states_loss(s_states, t_states, lmap: list[int], real: torch.Tensor | None) -> torch.Tensor:
    """Per student block: MSE to its teacher block's states at the real positions (real (B, T) bool; None: all),
    over the teacher's mean square, so blocks weigh alike; the mean over the blocks."""
    loss = 0.0
    for s, ti in zip(s_states, lmap):
        t = t_states[ti] if real is None else t_states[ti][real]  # (B, T, H) or (N, H)
        s = s if real is None else s[real]
        loss = loss + (s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-6) / len(lmap)
    return loss


def loss_fn(student, teacher, batch, lmap, temperature: float = 2.0) -> torch.Tensor:
    lm_real = batch["attention_mask"].bool() if is_causal_lm(student) else None  # (B, T): where logits are needed
    with torch.no_grad():
        t_pool, t_states, t_logits = _forward(teacher, batch, grad=False, real=lm_real)
    s_pool, s_states, s_logits = _forward(student, batch, grad=True, real=lm_real)
    real = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones(  # (B, T); an image: all
        t_states[0].shape[:2], dtype=torch.bool, device=t_states[0].device)
    loss = (1 - torch.cosine_similarity(s_pool, t_pool, dim=-1)).mean() + states_loss(s_states, t_states, lmap, real)
    if t_logits is not None:  # the teacher has a head (and so has the student: compress keeps it)
        kept = kept_tokens(student.net)
        if kept is not None:  # a vocabulary-pruned causal LM: -inf at the dropped tokens; KL over the kept ones
            s_logits, t_logits = s_logits[..., kept], t_logits[..., kept]
        loss = loss + logit_kl(s_logits, t_logits, real, temperature)
    return loss


def speech_items(batches: list[dict]) -> list[dict]:
    """Speech calibration batches -> one item per clip: {"input_features": (1, 80, 3000), "decoder_input_ids":
    (1, T)}."""
    return [{k: v[r : r + 1] for k, v in b.items()} for b in batches for r in range(len(b["input_features"]))]


def speech_batch(items: list[dict], pad: int) -> tuple[dict, torch.Tensor]:
    """Clips -> (forward kwargs: input_features (B, 80, 3000), decoder_input_ids (B, T) right-padded with `pad`;
    real (B, T) bool). The decoder is causal: padding after a token never changes that token's outputs."""
    ids = [it["decoder_input_ids"][0] for it in items]
    dec = torch.full((len(ids), max(len(x) for x in ids)), pad, dtype=torch.long)
    real = torch.zeros(dec.shape, dtype=torch.bool)
    for b, x in enumerate(ids):
        dec[b, : len(x)], real[b, : len(x)] = x, True
    return {"input_features": torch.cat([it["input_features"] for it in items]), "decoder_input_ids": dec}, real


def speech_loss(student, teacher, batch, real, lmap: dict, temperature: float = 2.0) -> torch.Tensor:
    """Whisper: the encoder's blocks (every frame), the decoder's blocks and the KL of the next-token distributions
    (the real decoder tokens), each stack of blocks weighing as much as the KL."""
    def run(model, grad):
        with torch.set_grad_enabled(grad):
            out = model.net(**batch, output_hidden_states=True)
        return out.encoder_hidden_states[1:], out.decoder_hidden_states[1:], out.logits  # blocks; (B, T, V)

    with torch.no_grad():
        t_enc, t_dec, t_logits = run(teacher, False)
    s_enc, s_dec, s_logits = run(student, True)
    return (states_loss(s_enc, t_enc, lmap["encoder.layers"], None)
            + states_loss(s_dec, t_dec, lmap["decoder.layers"], real) + logit_kl(s_logits, t_logits, real, temperature))


class _Checkpoint:
    """student weights + AdamW state (safetensors) + progress (JSON) in one folder, replaced whole at each save (a
    run killed mid-save, even by kill -9, leaves the previous checkpoint)."""

    def __init__(self, folder: Path | None, fingerprint: str):
        self.folder, self.fingerprint = folder, fingerprint

    def save(self, student, opt, progress: dict) -> None:
        if self.folder is None:
            return
        from ..io import state_for_safetensors  # io imports the passes: imported at module level it would cycle

        with atomic_folder(self.folder, force=True) as tmp:
            # tied tensors (Gemma's token table and lm_head) as two copies: safetensors refuses shared storage
            save_file({k: v.cpu() for k, v in state_for_safetensors(student.net).items()}, tmp / "student.safetensors")
            state = opt.state_dict()
            tensors = {f"{i}.{k}": v.cpu() for i, s in state["state"].items() for k, v in s.items()}
            save_file(tensors, tmp / "optimizer.safetensors")
            (tmp / "progress.json").write_text(json.dumps({**progress, "fingerprint": self.fingerprint,
                                                           "param_groups": state["param_groups"]}))

    def load(self, student, opt) -> dict | None:
        if self.folder is None or not (self.folder / "progress.json").is_file():
            return None
        progress = json.loads((self.folder / "progress.json").read_text())
        if progress.get("fingerprint") != self.fingerprint:
            return None  # another run's checkpoint: start over
        student.net.load_state_dict(load_file(self.folder / "student.safetensors"))
        flat = load_file(self.folder / "optimizer.safetensors")
        state: dict = {}
        for key, v in flat.items():
            i, name = key.split(".", 1)
            state.setdefault(int(i), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": progress["param_groups"]})
        return progress

    def remove(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def distill(model, cfg: Distill, ctx, progress_bar: bool = True) -> dict:
    """Train `model` (the student, in place) towards ctx.teacher; returns the decisions for the manifest."""
    from tqdm import tqdm

    student, teacher = model, ctx.teacher
    texts = ctx.corpus_texts
    # an image model learns on the calibration images (N, C, H, W), as a text model on the calibration text
    pixels = torch.cat([b["pixel_values"] for b in ctx.calib.batches]) if is_image(student) else None
    clips = speech_items(ctx.calib.batches) if is_speech(student) else None  # and a speech model on its clips
    n_items = len(pixels) if pixels is not None else len(clips) if clips is not None else len(texts)
    kind = SPEECH if clips is not None else CAUSAL_LM if is_causal_lm(student) else "other"
    batch_size, peak = cfg.batch_size or BATCH_SIZE[kind], cfg.lr or LR[kind]
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RecipeError("distill: device=cuda, but this machine has no CUDA device")
    student.net.to(cfg.device)
    teacher.net.to(cfg.device)
    lmap = ({p: layer_map(student, teacher, p) for p in ("encoder.layers", "decoder.layers")} if clips is not None
            else layer_map(student, teacher))
    params = [p for p in student.net.parameters() if p.is_floating_point()]  # a task head's included
    for p in params:
        p.requires_grad_(True)
    # fused: one kernel over all parameters; the per-parameter loop took 1.3 s a step on Gemma 3 270M, fused 0.14 s
    opt = torch.optim.AdamW(params, lr=peak, weight_decay=0.01, fused=True)
    fingerprint = json.dumps([student.manifest["recipe"], n_items, [list(p.shape) for p in params]])
    ckpt = _Checkpoint(getattr(ctx, "checkpoint_dir", None), fingerprint)
    student.net.eval()  # no dropout: deterministic, and the teacher's targets are noise-free
    teacher.net.eval()

    done = ckpt.load(student, opt) or {"step": 0, "elapsed": 0.0, "losses": []}
    step, elapsed = done["step"], done["elapsed"]
    budget_s = cfg.minutes * 60 if cfg.minutes is not None else None
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    losses = done["losses"]
    bar = tqdm(total=cfg.steps or int(budget_s), initial=step if cfg.steps else int(elapsed), disable=not progress_bar,
               desc="distill", unit="step" if cfg.steps else "s", leave=False)
    last_save, save_cost = time.perf_counter(), 0.0
    start, start_elapsed = time.perf_counter(), elapsed

    def finished() -> bool:
        return step >= cfg.steps if cfg.steps else elapsed >= budget_s

    while not finished():
        frac = step / cfg.steps if cfg.steps else elapsed / budget_s
        lr = peak * min(1.0, (step + 1) / WARMUP_STEPS) * max(0.0, 1.0 - frac)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = [order[(step * batch_size + j) % len(order)] for j in range(batch_size)]
        if clips is not None:
            batch, real = speech_batch([clips[i] for i in idx], student.net.config.pad_token_id or 0)
            batch = {k: v.to(cfg.device) for k, v in batch.items()}
            loss = speech_loss(student, teacher, batch, real.to(cfg.device), lmap, cfg.temperature)
        else:
            if pixels is not None:
                batch = {"pixel_values": pixels[idx].to(cfg.device)}
            else:
                batch = dict(student.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                               max_length=MAX_LENGTH, return_tensors="pt").to(cfg.device))
            loss = loss_fn(student, teacher, batch, lmap, cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        losses.append(round(loss.item(), 7))
        elapsed = start_elapsed + time.perf_counter() - start
        bar.update(1 if cfg.steps else int(elapsed) - bar.n)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if time.perf_counter() - last_save > max(CHECKPOINT_SECONDS, SAVE_SHARE * save_cost):
            t0 = time.perf_counter()
            ckpt.save(student, opt, {"step": step, "elapsed": elapsed, "losses": losses})
            last_save = time.perf_counter()
            save_cost = last_save - t0
    bar.close()
    student.net.cpu()
    teacher.net.cpu()
    for p in params:
        p.requires_grad_(False)
    ckpt.remove()
    k = max(1, min(20, len(losses) // 3))  # mean of the first and last k steps, k small enough not to overlap
    head, tail = losses[:k], losses[-k:]
    return {"steps": step, "seconds": round(elapsed, 1), "layer_map": lmap, "batch_size": batch_size, "lr": peak,
            "sentences": step * batch_size,
            "loss_first": round(sum(head) / max(1, len(head)), 6), "loss_last": round(sum(tail) / max(1, len(tail)), 6),
            **({"temperature": cfg.temperature} if teacher.head is not None else {})}
