"""Training speed and memory: tuner's own training path against a plain transformers + peft +
bitsandbytes loop and against Unsloth, on the same GPU, the same model folder and the same rows.

Every tool trains the same random-init model of a real shape (Llama-2-7B, Llama-3-8B, Qwen2.5-7B, or a
tiny one for CPU smoke tests) on the same random token rows: batch 1, ``seq`` tokens per optimizer step,
labels = inputs, LoRA r64 / alpha 16 / dropout 0.1 on all linear layers, gradient checkpointing.

* ``tuner``: the model is built by ``tuner.train.model.build_model`` from a ``TrainConfig`` and the
  speed settings of the environment, trained by tuner's Trainer class with its training arguments,
  collator and event callback, as ``tuner.train.run`` assembles them.
* ``plain``: issue 6's baseline, a hand-written loop: ``from_pretrained`` with a BitsAndBytesConfig
  (NF4, double quant), ``prepare_model_for_kbit_training``, ``get_peft_model``, bitsandbytes'
  PagedAdamW32bit, torch autocast (fp16 + GradScaler for Llama-2 QLoRA as XTuner 0.1.9's recipe did,
  bf16 otherwise), reentrant gradient checkpointing, clipping at 1.0, ``loss.item()`` each step.
* ``unsloth``: issue 16's peer, Unsloth's FastLanguageModel with its own checkpointing, through the
  same loop and optimizer as ``plain``.

Modules, in import order: spec (the configuration and shared recipe), shapes (model folders, FLOPs),
tools (the three tools), profile (profilers, idle gaps), measure (step clock, one row, provenance),
report (tables, results file, the speed-settings table), cli (options, driver), suites (suites.toml).

    python -m bench.train_speed --shape llama2-7b --method qlora --seq 512,4096 --out-dir "$OUT"
    python -m bench.train_speed --suite targets --out-dir "$OUT"
    python -m bench.train_speed --tiny --in-process ...   # CPU smoke test
    python -m bench.train_speed --report bench/results/2026-12-01-h200-final.json
"""
