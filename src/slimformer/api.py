"""The one verb: compress(model, recipe) -> a new, compressed SlimModel (the input is left untouched)."""

from __future__ import annotations

from pathlib import Path

from .data import calibration_texts
from .model import SlimModel
from .passes import Context, run_passes
from .passes.calib import Calibration
from .recipe import steps_of, to_text
from .speech import is_speech, speech_calibration
from .vision import calibration_pixels, is_image

CALIB_SENTENCES = 512  # default calibration size: enough for activation ranges and importance, seconds to run
# the compress report's calibration-like check text, the sentences after those (measure/fidelity.py): 32,640 pairs,
# a fraction of a second to score
REPORT_SENTENCES = 256
# a causal LM's: every forward ends in (B, T, vocabulary) logits (Gemma 3: 262k tokens), so fewer, in smaller batches
CALIB_SENTENCES_LM, CALIB_BATCH_LM = 128, 8


def calibration_of(model: SlimModel, calib: list | str | None) -> tuple[list[str] | None, Calibration]:
    """(the whole calibration text, or None for speech and images; the calibration batches) of compress's calib
    argument (its docstring); a one-line error where calib does not fit the model (a missing file, no speech)."""
    if is_speech(model):  # clips with their transcripts (speech.speech_calibration): no text corpus
        return None, Calibration(speech_calibration(calib, model))
    if is_image(model):  # images (a folder, tensors, or random-normal pixels): no text, no vocabulary
        return None, Calibration.from_pixels(calibration_pixels(calib, model))
    # the whole calibration text for vocabulary pruning; a sample of it for everything else
    corpus = calib if isinstance(calib, list) else calibration_texts(None, path=calib)
    # the REPORT_SENTENCES after the sample are the compress report's "calibration-like" check text (measure/
    # fidelity.py): no pass reads them, `vocab` and `distill` (which read the rest of the text) included
    corpus = corpus[:CALIB_SENTENCES] + corpus[CALIB_SENTENCES + REPORT_SENTENCES:]
    lm = model.head == "causal-lm"
    return corpus, Calibration.from_texts(model.tokenizer, corpus[:CALIB_SENTENCES_LM if lm else CALIB_SENTENCES],
                                          batch_size=CALIB_BATCH_LM if lm else 32)


def compress(model: SlimModel, recipe: str | list, calib: list | str | None = None,
             progress=None, checkpoint_dir: str | Path | None = None) -> SlimModel:
    """Apply `recipe` (text like "int8" or a list of configs like [Int8()]) to a copy of `model`.

    calib: calibration sentences, a path to a text file (one sentence a line), or None for the default: STS-B train
    and SST-2 train sentences from the data folder, then most of the corpus shipped in the package (data.
    calibration_texts), else that whole corpus. An image model's calib
    is a folder of images, a list of pixel tensors, or None for random-normal pixels (vision.calibration_pixels).
    checkpoint_dir: where training steps keep resumable state (the same call after a crash resumes from it). The
    manifest records the recipe as canonical text (recipe.to_text)."""
    steps = steps_of(recipe)  # parsed (text) or checked (configs) once, before anything is copied or read
    corpus, calibration = calibration_of(model, calib)
    out = model.clone()
    prior = out.manifest.get("recipe")  # a compressed model compressed again: its manifest keeps both recipes
    out.manifest["recipe"] = "+".join(filter(None, [prior, to_text(steps)]))
    ctx = Context(calibration, teacher=model, corpus_texts=corpus,
                  default_calib=calib is None,
                  checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None)
    return run_passes(out, steps, ctx, progress)
