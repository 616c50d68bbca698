"""`slimformer search`: the fastest model within a quality budget, over structure, quantization, distillation and
runtime. Optuna is the engine (study.py); each trial is one compress (+ export) + measure in a subprocess
(trial.py, probe.py); space.py maps a trial's parameters to recipe text and a runtime; proxy.py predicts a
candidate's cost from a latency table before it is built; report.py writes search.json, search.md and pareto.png."""
