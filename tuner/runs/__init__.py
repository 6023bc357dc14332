"""tuner.runs: the run folder on disk (work_dirs/<name>/<timestamp>/): its layout, events.jsonl, the
folder lock, the resume contract, finding an adapter in a run or checkpoint, the loss plot."""
