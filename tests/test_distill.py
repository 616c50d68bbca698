import time

import pytest
import torch

import slimformer
from slimformer.passes import distill as D


def held_out_loss(student, teacher, texts):
    batch = dict(student.tokenizer(texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        return float(D.loss_fn(student, teacher, batch, D.layer_map(student, teacher)))


def test_a_few_steps_reduce_the_loss_on_held_out_text(tiny, sentences):
    train, held = sentences[:60], sentences[60:]
    before = slimformer.compress(tiny, "ffn(keep=0.25)", calib=train)
    after = slimformer.compress(tiny, "ffn(keep=0.25)+distill(steps=15, lr=0.001, batch_size=8)", calib=train)
    assert held_out_loss(after, tiny, held) < 0.8 * held_out_loss(before, tiny, held)
    step = after.manifest["steps"][-1]
    assert step["steps"] == 15 and step["loss_last"] < step["loss_first"] and step["batch_size"] == 8
    default = slimformer.compress(tiny, "ffn(keep=0.25)+distill(steps=1)", calib=train).manifest["steps"][-1]
    assert default["batch_size"] == 32 and default["sentences"] == 32  # a text model's default
    assert default["lr"] == 3e-4 and step["lr"] == 1e-3


def test_deterministic_for_a_seed(tiny, sentences):
    recipe = "ffn(keep=0.5)+distill(steps=4, lr=0.001, batch_size=8)"
    a = slimformer.compress(tiny, recipe, calib=sentences)
    b = slimformer.compress(tiny, recipe, calib=sentences)
    for (k, va), vb in zip(a.encoder.state_dict().items(), b.encoder.state_dict().values()):
        assert torch.equal(va, vb), k


def test_resume_after_interruption_loses_nothing(tiny, sentences, tmp_path, monkeypatch):
    recipe = "ffn(keep=0.5)+distill(steps=6, lr=0.001, batch_size=8)"
    whole = slimformer.compress(tiny, recipe, calib=sentences)

    monkeypatch.setattr(D, "CHECKPOINT_SECONDS", 0.0)  # checkpoint after every step
    monkeypatch.setattr(D, "SAVE_SHARE", 0)
    calls = {"n": 0}
    real_loss = D.loss_fn

    def dying_loss(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the process dies in the middle of step 4
        return real_loss(*args)

    monkeypatch.setattr(D, "loss_fn", dying_loss)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        slimformer.compress(tiny, recipe, calib=sentences, checkpoint_dir=ckpt)
    assert (ckpt / "progress.json").is_file()

    monkeypatch.setattr(D, "loss_fn", real_loss)
    resumed = slimformer.compress(tiny, recipe, calib=sentences, checkpoint_dir=ckpt)
    assert resumed.manifest["steps"][-1]["steps"] == 6
    assert not ckpt.exists()  # removed once the run is done
    for (k, va), vb in zip(whole.encoder.state_dict().items(), resumed.encoder.state_dict().values()):
        torch.testing.assert_close(va, vb, atol=1e-6, rtol=1e-5, msg=k)


def test_checkpoints_take_a_bounded_share_of_the_time(tiny, sentences, tmp_path, monkeypatch):
    """A save comes CHECKPOINT_SECONDS after the last, and never sooner than SAVE_SHARE times that save's own
    duration: a large model's checkpoint (Gemma 3 270M's weights and AdamW moments: 3.6 GB on disk) must not eat a budget
    given in minutes."""
    monkeypatch.setattr(D, "CHECKPOINT_SECONDS", 0.0)
    saves, save = [], D._Checkpoint.save

    def slow_save(self, *args):  # (start, end) of every save; each takes at least 20 ms
        t0 = time.perf_counter()
        time.sleep(0.02)
        save(self, *args)
        saves.append((t0, time.perf_counter()))

    monkeypatch.setattr(D._Checkpoint, "save", slow_save)
    slimformer.compress(tiny, "ffn(keep=0.5)+distill(minutes=0.03, batch_size=8)", calib=sentences,
                        checkpoint_dir=tmp_path / "ckpt")
    assert len(saves) >= 2
    for (a0, a1), (b0, _) in zip(saves, saves[1:]):
        assert b0 - a1 >= D.SAVE_SHARE * (a1 - a0)
