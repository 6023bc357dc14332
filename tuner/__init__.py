"""tuner: fine-tune a large language model on one GPU (or a CPU), in one window.

The package map, in dependency order: each subpackage imports only the ones above it in this list
(tests/test_layers.py checks it), so any behaviour can be found from the folder names.

- core     errors, atomic files and folders, the workspace, the machine (GPU/CPU, ranks)
- models   loading tokenizers, models and LoRA; model shapes; decoder layers; the embedded model
- data     samples: formats and sources, convert, split, templates, encode, pack, check, identity
- config   TrainConfig (schema, YAML files, validate), presets, SpeedSettings, DeepSpeed configs
- runs     the run folder on disk: layout, events, locks, resume, finding an adapter, the loss plot
- plan     RunPlan (every speed and memory decision of a run, made once) and the estimate that prices it
- fast     optional speed and memory mechanisms of the training path; imported only by train
- chat     generation: the chat session, stop tokens, greedy answers, the agent, the OpenAI-style server
- train    the engine: run, model build (executes the plan), data feed, Trainer, callbacks, job
- export   adapter export, merge, GGUF, Modelfile, evaluation, hub upload
- cli      the ``python -m tuner VERB`` verbs
- ui       the Gradio app (the only importer of gradio)
"""

__version__ = "0.1.0"
