import os

os.environ["HF_HUB_OFFLINE"] = "1"  # never reach a hub from tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from slimformer.data import read_stsb
from slimformer.passes import int8_kernels


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    """Real sentences of varied length from STS-B dev (not test)."""
    pairs = read_stsb("dev")[:40]
    return [s for a, b, _ in pairs for s in (a, b)]


@pytest.fixture(scope="session")
def minilm():
    """The embedded default, loaded once; tests must clone() before changing it."""
    import slimformer

    return slimformer.load()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, minilm):
    """A tiny random BERT (2 layers, hidden 64, 4 heads) as a Hugging Face folder, with MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=128, max_position_embeddings=128)
    path = tmp_path_factory.mktemp("tiny") / "tiny-bert"
    BertModel(cfg).eval().save_pretrained(path, safe_serialization=True)
    minilm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny(tiny_dir):
    import slimformer

    return slimformer.load(tiny_dir)


@pytest.fixture(params=list(int8_kernels.KERNELS))
def kernel(request) -> str:
    """Each int8 kernel in turn; one this CPU or build cannot run is skipped, saying so."""
    if not int8_kernels.available(request.param):
        pytest.skip(f"int8 kernel {request.param} cannot run on this CPU")
    return request.param


@pytest.fixture
def float_tol():
    """float_tol(exported): the tolerance, relative to the outputs' scale, of an fp32 export against torch. 1e-4 where
    the runtime computes in fp32; 3e-2 where OpenVINO computes in bf16 (its default on CPUs with AVX512-BF16 or AMX:
    8 significant bits, 2^-8 relative per rounding, compounded over layers; measured up to 0.015 of a tiny DeiT's
    embeddings and 0.009 of a tiny classifier's largest logit, where the same graphs in f32 are within 1e-6)."""
    return lambda exported: 1e-4 if exported.encoder.session.precision == "f32" else 3e-2
