"""Training engine on tiny models (CPU, seconds): run folder, loss normalisation, resume, stop, job."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import make_config, write_data
from tuner.core.errors import JobError, TunerError
from tuner.runs.events import read_events
from tuner.train.callbacks import RunControl


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_run_folder_has_everything_and_loss_goes_down(workspace, tiny_llama_dir):
    from tuner.train.run import train

    data = write_data(workspace / "d.jsonl", repeat=2)
    config = make_config(
        tiny_llama_dir,
        data,
        max_steps=24,
        lr=3e-3,
        lora_r=16,
        lora_alpha=64,
        evaluation_inputs=["Who are you?"],
        evaluation_freq=12,
        evaluation_max_new_tokens=8,
        test_split=0.2,
        eval_freq=12,
    )
    result = train(config)
    run = result.run_dir
    assert run.parent == workspace / "work_dirs" / "tiny_test"
    assert result.status == "completed" and result.steps == 24
    assert gc.get_freeze_count() == 0  # the objects frozen for the run were handed back (tuner.train.collector)
    for name in ("config.yaml", "events.jsonl", "train.log", "eval_samples.jsonl", "status.json"):
        assert (run / name).is_file(), name
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "adapter" / "tokenizer_config.json").is_file()

    kept = sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))
    assert kept == [16, 20, 24]  # save_steps 4, keep the last 3
    assert not (run / ".staging").exists() or not any((run / ".staging").iterdir())

    events = read_events(run)
    logs = [e for e in events if e["type"] == "log" and "loss" in e]
    assert len(logs) >= 20
    for key in ("step", "total_steps", "epoch", "loss", "lr", "grad_norm", "elapsed_s"):
        assert key in logs[-1], key
    assert logs[-1]["total_steps"] == 24 and "eta_s" in logs[-1]
    first, last = sum(e["loss"] for e in logs[:3]) / 3, sum(e["loss"] for e in logs[-3:]) / 3
    assert last < first * 0.9, (first, last)  # a random 2-layer model learns slowly through LoRA
    assert any(e["type"] == "eval" and "eval_loss" in e for e in events)
    samples = [e for e in events if e["type"] == "sample"]
    assert [e["step"] for e in samples] == [0, 12, 24]
    assert samples[0]["samples"][0]["prompt"] == "Who are you?"
    assert events[-1]["type"] == "status" and events[-1]["status"] == "completed"

    # The saved config reproduces the run: train it again from the file.
    from tuner.config.files import load_config

    again = load_config(run / "config.yaml")
    assert again.max_steps == 24 and again.model == str(tiny_llama_dir)
    rerun = train(make_config(tiny_llama_dir, data, max_steps=2, name=again.name))
    assert rerun.status == "completed" and rerun.run_dir != run


def _one_sgd_step(workspace, model_dir, data, batch_size, accum):
    from tuner.train.run import train

    config = make_config(
        model_dir,
        data,
        optimizer="sgd",
        lr=0.5,
        max_norm=1e9,
        max_steps=1,
        batch_size=batch_size,
        accumulative_counts=accum,
        name=f"norm_b{batch_size}_a{accum}",
    )
    return adapter_tensors(train(config).output_dir)


def test_loss_normalised_by_supervised_tokens_under_accumulation(workspace, tiny_llama_dir):
    # Two samples whose answers differ a lot in length: averaging per micro-batch would weigh the short
    # answer's tokens far more than one big batch does, and the SGD updates would differ.
    pairs = [
        ("Say hello.", "Hi."),
        ("Introduce yourself.", "I am Tuna, a helpful assistant built by the tuner team for you today."),
    ]
    data = write_data(workspace / "two.jsonl", pairs)
    one_batch = _one_sgd_step(workspace, tiny_llama_dir, data, batch_size=2, accum=1)
    accumulated = _one_sgd_step(workspace, tiny_llama_dir, data, batch_size=1, accum=2)
    lora_b = [k for k in one_batch if "lora_B" in k]
    assert lora_b and any(one_batch[k].abs().max() > 0 for k in lora_b)  # the step did move the weights
    for key in one_batch:
        torch.testing.assert_close(accumulated[key], one_batch[key], rtol=1e-4, atol=1e-6)


def _stop_at(step: int, control: RunControl, save: bool):
    def listener(event):
        if event["type"] == "log" and event.get("step") == step:
            control.request_stop(save=save)

    return listener


def test_resume_continues_from_last_checkpoint_with_same_schedule(workspace, tiny_llama_dir):
    from tuner.train.run import train

    data = write_data(workspace / "d.jsonl", repeat=2)
    straight = train(make_config(tiny_llama_dir, data, name="straight", max_steps=8, save_steps=2))

    config = make_config(tiny_llama_dir, data, name="interrupted", max_steps=8, save_steps=2)
    control = RunControl()
    cancelled = train(config, control=control, listener=_stop_at(5, control, save=False))
    assert cancelled.status == "cancelled" and cancelled.output_dir is None
    assert not (cancelled.run_dir / "adapter").exists()
    resumed = train(config, resume=True)
    assert resumed.run_dir == cancelled.run_dir and resumed.status == "completed" and resumed.steps == 8
    resumed_steps = [e["step"] for e in read_events(resumed.run_dir) if e["type"] == "log" and "loss" in e]
    assert 5 in resumed_steps and resumed_steps[-1] == 8  # steps 5.. ran again after checkpoint-4
    expected, got = adapter_tensors(straight.output_dir), adapter_tensors(resumed.output_dir)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-6)


def test_resume_without_checkpoint_is_a_clear_error(workspace, tiny_llama_dir):
    from tuner.train.run import train

    data = write_data(workspace / "d.jsonl")
    with pytest.raises(TunerError, match="nothing to resume"):
        train(make_config(tiny_llama_dir, data, name="never_ran"), resume=True)


def test_stop_and_save_leaves_a_usable_adapter(workspace, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuner.train.run import train

    data = write_data(workspace / "d.jsonl", repeat=2)
    control = RunControl()
    result = train(
        make_config(tiny_llama_dir, data, max_steps=50, save_steps=100),
        control=control,
        listener=_stop_at(3, control, save=True),
    )
    # Deferred logging (the default) hands step 3's line to listeners at step 4's logging point: the
    # stop takes effect there, before step 4's checkpoint decision.
    assert result.status == "stopped" and result.steps == 4
    assert (result.run_dir / "checkpoint-4").is_dir()  # saved on stop, so --resume can continue
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model = PeftModel.from_pretrained(base, str(result.output_dir))
    assert model.active_adapter == "default"
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["status"] == "stopped"


def test_background_job_streams_events_refuses_second_start_and_releases_model(
    workspace, tiny_llama_dir, monkeypatch
):
    import tuner.train.run as train_module
    from tuner.train.job import TrainingJob

    models = []
    original = train_module.build_model

    def tracking_build_model(config, settings):
        model, loaded = original(config, settings)
        models.append(weakref.ref(model))
        return model, loaded

    monkeypatch.setattr(train_module, "build_model", tracking_build_model)
    data = write_data(workspace / "d.jsonl", repeat=2)
    job = TrainingJob()
    run_dir = job.start(make_config(tiny_llama_dir, data, max_steps=6))
    with pytest.raises(JobError, match="already active"):
        job.start(make_config(tiny_llama_dir, data, max_steps=6))
    assert job.wait(timeout=120) == "completed"
    events = job.events()
    assert [e["step"] for e in events if e["type"] == "log" and "loss" in e] == [1, 2, 3, 4, 5, 6]
    assert events == read_events(run_dir)[: len(events)] or len(events) == len(read_events(run_dir))
    assert job.events(since=len(events)) == []
    gc.collect()
    assert models and all(ref() is None for ref in models)  # model and optimizer were released


def test_failure_inside_the_job_becomes_an_error_event(workspace, tiny_llama_dir):
    from tuner.train.job import TrainingJob

    bad = workspace / "bad.jsonl"
    bad.write_text('{"conversation": [{"input": "q", "output": "a"}]}\n{"conversation": [{"input": "q"}]}\n')
    job = TrainingJob()
    job.start(make_config(tiny_llama_dir, bad, max_steps=2))
    assert job.wait(timeout=60) == "failed"
    errors = [e for e in job.events() if e["type"] == "error"]
    assert len(errors) == 1 and "bad.jsonl" in errors[0]["message"] and "check-data" in errors[0]["message"]
    # The job is usable again after a failure.
    good = write_data(workspace / "good.jsonl")
    job.start(make_config(tiny_llama_dir, good, max_steps=1))
    assert job.wait(timeout=60) == "completed"


def _out_of_memory_after(steps: int, monkeypatch) -> None:
    """Trainer's training step raises CUDA's out-of-memory error once ``steps`` steps are done."""
    from transformers import Trainer

    real_step = Trainer.training_step

    def step_then_oom(self, *args, **kwargs):
        if self.state.global_step >= steps:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", step_then_oom)


def test_out_of_memory_is_reported_with_advice_and_checkpoint_kept(workspace, tiny_llama_dir, monkeypatch):
    from tuner.train.run import train

    _out_of_memory_after(2, monkeypatch)
    data = write_data(workspace / "d.jsonl", repeat=2)
    with pytest.raises(TunerError, match="out of GPU memory.*qlora.*max_length.*gradient_checkpointing"):
        train(make_config(tiny_llama_dir, data, max_steps=6, save_steps=2))
    run = next((workspace / "work_dirs" / "tiny_test").iterdir())
    assert (run / "checkpoint-2" / "adapter_model.safetensors").is_file()
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "out of GPU memory" in status["error"]
    assert read_events(run)[-1]["type"] == "error"


def test_a_failing_run_still_logs_its_last_finished_step(workspace, tiny_llama_dir, monkeypatch):
    # With deferred logging a step's line waits for the next logging point; a run that fails before
    # it (out of memory in step 3 here) must still log step 2.
    from tuner.train.run import train

    _out_of_memory_after(2, monkeypatch)
    monkeypatch.setenv("TUNER_LEAN_STEPS", "on")
    data = write_data(workspace / "d.jsonl", repeat=2)
    with pytest.raises(TunerError, match="out of GPU memory"):
        train(make_config(tiny_llama_dir, data, max_steps=6, save_steps=100))
    run = next((workspace / "work_dirs" / "tiny_test").iterdir())
    assert [e["step"] for e in read_events(run) if e["type"] == "log" and "loss" in e] == [1, 2]


def test_stop_racing_with_the_end_of_a_run_never_leaves_the_job_stuck(workspace, tiny_llama_dir, monkeypatch):
    import threading

    import tuner.train.run as train_module
    from tuner.train.job import TrainingJob
    from tuner.train.run import RunResult

    release = threading.Event()

    def finishing_train(config, *, run_dir, resume, control, listener):
        release.wait(30)  # the run ends just after stop() was accepted
        return RunResult(run_dir, "completed", run_dir / "adapter", 3, 0.5)

    monkeypatch.setattr(train_module, "train", finishing_train)
    job = TrainingJob()
    job.start(make_config(tiny_llama_dir, write_data(workspace / "d.jsonl")))
    job.stop(save=True)
    assert job.status == "stopping"
    release.set()
    assert job.wait(timeout=30) == "completed"  # not stuck in "stopping"
    with pytest.raises(JobError, match="no training run is active"):
        job.stop()
    job.start(make_config(tiny_llama_dir, workspace / "d.jsonl"))  # a new start is accepted
    release.set()
    assert job.wait(timeout=30) == "completed"


def test_speed_switches_leave_the_training_unchanged(workspace, tiny_llama_dir, monkeypatch):
    # TUNER_LEAN_STEPS / TUNER_FUSED_LORA change how a step is computed and counted, not what it
    # computes: the same adapter and the same token count (with accumulation and padding).
    from tuner.train.run import train

    data = write_data(workspace / "d.jsonl", repeat=2)
    settings = dict(max_steps=3, save_steps=100, accumulative_counts=2, gradient_checkpointing=True)
    settings.update(lora_dropout=0.1)  # the recomputation must replay the same dropout masks
    results = {}
    for name, env in {
        "default": {},
        "switched": {"TUNER_LEAN_STEPS": "off", "TUNER_FUSED_LORA": "off"},
    }.items():
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            result = train(make_config(tiny_llama_dir, data, name=f"switch_{name}", **settings))
        logs = [e for e in read_events(result.run_dir) if e["type"] == "log" and "loss" in e]
        results[name] = adapter_tensors(result.output_dir), logs[-1]["tokens_seen"]
    (default, default_tokens), (switched, switched_tokens) = results["default"], results["switched"]
    assert default_tokens and switched_tokens == default_tokens
    for key in default:
        torch.testing.assert_close(switched[key], default[key], rtol=1e-4, atol=1e-6)


def test_deferred_logging_logs_the_same_lines_for_the_same_steps_one_step_later(
    workspace, tiny_llama_dir, monkeypatch
):
    # Lean steps (TUNER_LEAN_STEPS) read a logged step's values back at the next logging point (no device
    # sync at this one): every line, evaluation, checkpoint and the summary must come out as without
    # it, stamped with its own step, and a step that saves or ends the run logs before it saves.
    from tuner.train.callbacks import EventCallback
    from tuner.train.run import train

    data = write_data(workspace / "d.jsonl", repeat=2)
    settings = dict(max_steps=7, save_steps=4, logging_steps=2, test_split=0.2, eval_freq=3)
    timing = ("elapsed_s", "eta_s", "tokens_per_s", "gpu_mem_gib", "ts", "time")
    runs = {}
    for mode in ("off", "on"):
        order = []  # the trainer's step at each step end, and the step each log line is stamped with
        step_end, on_log = EventCallback.on_step_end, EventCallback.on_log

        def record_end(self, args, state, control, _original=step_end, order=order, **kwargs):
            order.append(("end", state.global_step))
            return _original(self, args, state, control, **kwargs)

        def record_log(self, args, state, control, logs=None, _original=on_log, order=order, **kwargs):
            if logs and "loss" in logs:
                order.append(("log", state.global_step))
            return _original(self, args, state, control, logs=logs, **kwargs)

        with monkeypatch.context() as patch:
            patch.setenv("TUNER_LEAN_STEPS", mode)
            patch.setattr(EventCallback, "on_step_end", record_end)
            patch.setattr(EventCallback, "on_log", record_log)
            result = train(make_config(tiny_llama_dir, data, name=f"deferred_{mode}", **settings))
        events = [
            {key: value for key, value in event.items() if key not in timing}
            for event in read_events(result.run_dir)
            if event["type"] in ("log", "eval", "summary", "checkpoint")
        ]
        state = json.loads((result.run_dir / "checkpoint-4" / "trainer_state.json").read_text())
        history = [
            # without lean steps Trainer counts tokens itself and logs its count here too
            {
                k: v
                for k, v in line.items()
                if "runtime" not in k and "per_second" not in k and k != "num_input_tokens_seen"
            }
            for line in state["log_history"]
        ]
        runs[mode] = events, history, order

    (events_off, history_off, order_off), (events_on, history_on, order_on) = runs["off"], runs["on"]
    assert [e["step"] for e in events_on if e["type"] == "log"] == [1, 2, 4, 6]  # logging_first_step
    for on, off in zip(events_on, events_off, strict=True):
        assert on == pytest.approx(off), (on, off)
    for on, off in zip(history_on, history_off, strict=True):
        assert on == pytest.approx(off), (on, off)
    assert order_off[:5] == [("end", 1), ("log", 1), ("end", 2), ("log", 2), ("end", 3)]
    # Deferred: each line comes one step end later, except step 4's: that step saves a checkpoint.
    assert order_on[:7] == [
        ("end", 1),
        ("end", 2),
        ("log", 1),
        ("end", 3),
        ("log", 2),
        ("end", 4),
        ("log", 4),
    ]


def test_stop_while_loading_trains_nothing(workspace, tiny_llama_dir, monkeypatch):
    import tuner.train.run as train_module
    from tuner.train.job import TrainingJob

    original = train_module.build_model
    job = TrainingJob()

    def stop_during_load(config, settings):
        job.stop(save=True)  # the user clicks Stop while the model is still loading
        return original(config, settings)

    monkeypatch.setattr(train_module, "build_model", stop_during_load)
    run_dir = job.start(make_config(tiny_llama_dir, write_data(workspace / "d.jsonl"), max_steps=5))
    assert job.wait(timeout=60) == "cancelled"
    assert job.result.steps == 0 and job.result.output_dir is None
    assert not list(run_dir.glob("checkpoint-*")) and not (run_dir / "adapter").exists()
    assert job.events()[-1]["message"].startswith("cancelled before the first step")


def test_keep_best_and_early_stopping(workspace, tiny_llama_dir):
    from tuner.train.run import train

    data = write_data(workspace / "d.jsonl", repeat=3)
    # Questions unlike the training ones: once the model memorises its data, their loss rises.
    unseen = [
        ("Name a colour.", "Blue is a colour."),
        ("Count to three.", "One, two, three."),
        ("What do cows drink?", "Cows drink water."),
        ("你好吗？", "我很好，谢谢。"),
    ]
    eval_data = write_data(workspace / "eval.jsonl", unseen)
    config = make_config(
        tiny_llama_dir,
        data,
        max_steps=40,
        lr=3e-2,
        lora_r=16,
        lora_alpha=64,
        eval_data_path=str(eval_data),
        eval_freq=2,
        save_steps=2,
        save_total_limit=2,
        keep_best=True,
        early_stopping_patience=2,
    )
    result = train(config)
    events = read_events(result.run_dir)
    evals = [(e["step"], e["eval_loss"]) for e in events if e["type"] == "eval"]
    best_step, best_loss = min(evals, key=lambda item: item[1])
    assert result.status == "completed"
    # Early stopping: it ended 2 evaluations after the best one, not at max_steps (lr 5e-2 overfits fast).
    assert result.steps < 40 and result.steps == evals[-1][0] and evals[-1][0] - best_step == 4
    # Keep-best: the final adapter is the best checkpoint's, kept despite save_total_limit.
    best = adapter_tensors(result.run_dir / f"checkpoint-{best_step}")
    final = adapter_tensors(result.output_dir)
    for key in best:
        torch.testing.assert_close(final[key], best[key])


def test_gpu_memory_cap_holds_the_allocator_and_the_estimate_to_it(monkeypatch):
    # TUNER_GPU_MEMORY_GIB: PyTorch's allocator may use the cap less the CUDA context it does not
    # count; the hardware the estimate plans against has the cap's memory; a bad value says what to give.
    from types import SimpleNamespace

    from tuner.core.errors import TunerError
    from tuner.core.system import CUDA_CONTEXT_GIB, hardware, limit_gpu_memory

    fractions = []
    props = SimpleNamespace(name="NVIDIA H200", total_memory=140 * 1024**3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f: fractions.append(f))
    monkeypatch.delenv("TUNER_GPU_MEMORY_GIB", raising=False)
    assert limit_gpu_memory() is None and fractions == [] and hardware().memory_gib == 140
    monkeypatch.setenv("TUNER_GPU_MEMORY_GIB", "80")
    assert limit_gpu_memory() == 80
    assert fractions == [pytest.approx((80 - CUDA_CONTEXT_GIB) / 140)]
    assert hardware().memory_gib == 80 and hardware().name == "NVIDIA H200"
    monkeypatch.setenv("TUNER_GPU_MEMORY_GIB", "200")  # more than the card: the card's memory
    assert hardware().memory_gib == 140
    for bad in ("eighty", "0", "-4"):
        monkeypatch.setenv("TUNER_GPU_MEMORY_GIB", bad)
        with pytest.raises(TunerError, match=f"TUNER_GPU_MEMORY_GIB='{bad}': give the GiB of GPU memory"):
            hardware()


def _built(model, checkpointed: int, offload: bool = False, budget: float = 33.0):
    """A BuiltModel whose plan checkpoints ``checkpointed`` of the model's layers (tuner.plan.decide
    picks the count: tests/plan/test_decide.py)."""
    from tuner.models.load import LoadedModel
    from tuner.plan.decide import RunPlan
    from tuner.train.model import BuiltModel

    layers = len(model.base_model.model.model.layers)
    plan = RunPlan(
        device="cuda",
        processes=1,
        deepspeed=False,
        lora=True,
        quantized=False,
        layers=layers,
        varlen_attention=False,
        liger=False,
        liger_wide_chunks=True,
        fused_lora=False,
        kbit_upcast=False,
        graphs_allowed=False,
        embedding_policy="off",
        lean=True,
        optimizer_asked="auto",
        checkpointed_layers=checkpointed,
        offload_checkpoints=offload,
        budget_gib=budget,
    )
    return BuiltModel(LoadedModel(model, torch.float32, "sdpa", "test", None, "cpu"), plan)


def test_the_budget_is_the_free_memory_with_what_pytorch_holds_within_the_cap(monkeypatch):
    from tuner.core.system import CUDA_CONTEXT_GIB
    from tuner.train.model import _budget_gib

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (30 * 1024**3, 80 * 1024**3))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: 2 * 1024**3)
    monkeypatch.delenv("TUNER_GPU_MEMORY_GIB", raising=False)
    assert _budget_gib() == 32 + CUDA_CONTEXT_GIB
    monkeypatch.setenv("TUNER_GPU_MEMORY_GIB", "16")  # a GPU shared with others: the plan gets the cap
    assert _budget_gib() == 16.0


def test_checkpointing_is_limited_to_the_layers_the_plan_checkpoints():
    # The first that many recompute their forward pass in the backward, the rest keep their
    # activations, and the gradients are those of the model without checkpointing.
    from tests.tiny import build_model, build_tokenizer
    from tuner.models.load import add_lora
    from tuner.train.model import limit_checkpointing

    tokenizer = build_tokenizer()
    config = make_config("unused", "unused.jsonl", gradient_checkpointing=True)

    def tiny_lora(checkpointing):
        model = build_model("llama", tokenizer, num_hidden_layers=4)
        return add_lora(model, r=4, dropout=0.0, gradient_checkpointing=checkpointing)

    model = tiny_lora(True)
    assert (
        limit_checkpointing(model, config, _built(model, 2))
        == "on 2 of 4 layers (the rest fit in 33 GiB of GPU memory)"
    )
    layers = model.base_model.model.model.layers
    assert [layer.gradient_checkpointing for layer in layers] == [True, True, False, False]
    calls = [0] * 4
    for index, layer in enumerate(layers):
        # a wrapped forward, not a hook: the recomputation runs the forward but not the module's hooks

        def counted(*args, forward=layer.mlp.forward, index=index, **kwargs):
            calls[index] += 1
            return forward(*args, **kwargs)

        layer.mlp.forward = counted
    reference = tiny_lora(False)
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(0, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    grads = []
    for each in (model, reference):
        each.train()
        each(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in each.named_parameters() if p.requires_grad})
    assert calls == [2, 2, 1, 1]  # the checkpointed layers ran again in the backward pass
    for name, grad in grads[1].items():
        torch.testing.assert_close(grads[0][name], grad)


def test_checkpointed_inputs_go_to_host_memory_when_every_layer_is_not_enough(monkeypatch):
    from tests.tiny import build_model, build_tokenizer
    from tuner.fast.checkpoint_offload import offloaded_checkpoint
    from tuner.models.load import add_lora
    from tuner.train.model import limit_checkpointing

    model = add_lora(
        build_model("llama", build_tokenizer(), num_hidden_layers=3), r=4, gradient_checkpointing=True
    )
    config = make_config("unused", "unused.jsonl", gradient_checkpointing=True)
    loaded = _built(model, 3, offload=True, budget=4.6)
    # Rows that long fragment PyTorch's default allocator: the log says how to start the next run
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    assert limit_checkpointing(model, config, loaded) == (
        "on every layer (3), inputs kept in host memory; start with "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to fit longer rows: on rows this long PyTorch's "
        "default allocator fragments (17% more GPU memory at 131k tokens)"
    )
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.setenv(name, "max_split_size_mb:512, expandable_segments:True")
        assert limit_checkpointing(model, config, loaded) == "on every layer (3), inputs kept in host memory"
        monkeypatch.delenv(name)
    layers = model.base_model.model.model.layers
    assert all(layer.gradient_checkpointing for layer in layers) and loaded.memory_tight
    assert all(layer._gradient_checkpointing_func is offloaded_checkpoint for layer in layers)


def test_out_of_memory_after_partial_checkpointing_says_how_to_checkpoint_everything():
    from tuner.models.load import LoadedModel
    from tuner.train.model import BuiltModel
    from tuner.train.run import OOM_ADVICE, oom_advice

    loaded = BuiltModel(LoadedModel(None, torch.bfloat16, "sdpa", "test", None, "cuda"))
    loaded.checkpointing = "on 19 of 32 layers (the rest fit in 23 GiB of GPU memory)"
    advice = oom_advice(loaded)
    assert advice.startswith("out of GPU memory with gradient checkpointing on 19 of 32 layers, as planned")
    assert "--set checkpoint_layers=all" in advice and advice.endswith("The last checkpoint was kept.")
    loaded.memory_tight = True  # what limit_checkpointing sets when every layer is checkpointed
    for full in ("on every layer (32)", "on every layer (32), inputs kept in host memory"):
        loaded.checkpointing = full
        assert oom_advice(loaded) == OOM_ADVICE
    loaded.checkpointing, loaded.memory_tight = "", False  # checkpointing off
    assert oom_advice(loaded) == OOM_ADVICE


def test_lora_layers_are_fused_by_default_but_not_under_deepspeed(tiny_llama_dir, monkeypatch):
    from tuner.train.model import build_model

    monkeypatch.delenv("TUNER_FUSED_LORA", raising=False)
    loaded = {
        deepspeed: build_model(make_config(tiny_llama_dir, "unused.jsonl", deepspeed=deepspeed))[1]
        for deepspeed in (None, "zero2")
    }
    assert loaded[None].fused_lora == 2 * 7 and loaded["zero2"].fused_lora == 0  # 2 layers x 7 linears
    assert "14 fused LoRA layers" in loaded[None].describe()
    assert "fused" not in loaded["zero2"].describe()


def test_rows_padded_for_cuda_graphs_train_the_same_and_count_only_real_tokens(
    workspace, tiny_llama_dir, monkeypatch
):
    # With CUDA graphs on, packed batches are padded to full rows (one shape to replay). The padding
    # is its own unsupervised sample: the adapter and the tokens the run reports are unchanged.
    import tuner.train.run
    from tuner.train.data import make_collator
    from tuner.train.run import train

    data = write_data(workspace / "d.jsonl", repeat=2)
    settings = dict(
        max_steps=3, save_steps=100, pack_to_max_length=True, tokens_per_step=96, lora_dropout=0.0
    )
    results = {}
    for name, pad_to in (("plain", None), ("padded", 96)):
        with monkeypatch.context() as patch:
            patch.setattr(
                tuner.train.run,
                "training_collator",
                lambda tokenizer, config, loaded, pad_to=pad_to: make_collator(
                    tokenizer, True, loaded.attention, pad_to=pad_to
                ),
            )
            result = train(make_config(tiny_llama_dir, data, name=f"pad_{name}", **settings))
        logs = [e for e in read_events(result.run_dir) if e["type"] == "log" and "loss" in e]
        results[name] = [e["loss"] for e in logs], logs[-1]["tokens_seen"]
    (plain, plain_tokens), (padded, padded_tokens) = results["plain"], results["padded"]
    assert plain_tokens and padded_tokens == plain_tokens
    # the same loss at every step (sums over rows of another length round a little differently;
    # Adam turns such roundings into visible weight differences on near-zero gradients)
    assert len(padded) == len(plain) == 3
    torch.testing.assert_close(torch.tensor(padded), torch.tensor(plain), rtol=1e-4, atol=0)


def test_a_non_finite_loss_is_logged_as_it_is_with_one_warning(tmp_path):
    # Lean steps turn Trainer's NaN filter off (a device sync per micro-step): the loss line shows
    # the NaN, and the run's events say once, in words, that training diverged and what to do.
    from types import SimpleNamespace

    from tuner.runs.events import EventLog
    from tuner.train.callbacks import EventCallback, RunControl

    events = EventLog(tmp_path / "events.jsonl")
    callback = EventCallback(events, RunControl())
    state = SimpleNamespace(global_step=7, max_steps=10, epoch=1.0, num_input_tokens_seen=0)
    control = SimpleNamespace(should_training_stop=False, should_save=False)
    callback.on_log(None, state, control, logs={"loss": 2.5})
    callback.on_log(None, state, control, logs={"loss": float("nan")})
    callback.on_log(None, state, control, logs={"loss": float("inf")})
    warnings = [e for e in events.since() if e["type"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["step"] == 7
    assert (
        "training loss is nan at step 7: training diverged; lower the learning rate" in warnings[0]["message"]
    )
    assert [e["loss"] for e in events.since() if e["type"] == "log"][1:] == [
        pytest.approx(float("nan"), nan_ok=True),
        float("inf"),
    ]
