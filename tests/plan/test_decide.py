"""The run plan: which mechanism applies where, decided once for the engine and the estimate alike."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.plan.test_estimate import SHAPES
from tuner.config.speed import SpeedSettings
from tuner.core.system import Hardware
from tuner.models.shape import shape_from_config
from tuner.plan.decide import checkpoint_plan, liger_applies, plan_run
from tuner.plan.memory import price

H100 = Hardware(device="cuda", name="NVIDIA H100 80GB HBM3", memory_gib=79.2, cpu_count=16)
CPU = Hardware(device="cpu", name="CPU", memory_gib=64, cpu_count=2)
LLAMA2_7B = shape_from_config(SHAPES["llama2-7b"])  # the benchmark's shape, as the estimate is calibrated on
DEFAULTS = SpeedSettings()


def qlora(**overrides) -> dict:
    return {"method": "qlora", "max_length": 4096, "lora_r": 64, "gradient_checkpointing": True, **overrides}


def plan(config=None, settings=DEFAULTS, hw=H100, budget=79.2, processes=1, liger=True):
    return plan_run(
        qlora() if config is None else config,
        settings,
        hw,
        LLAMA2_7B,
        budget_gib=budget,
        liger=liger,
        processes=processes,
    )


def test_a_roomy_gpu_gets_every_mechanism_and_recomputes_nothing():
    roomy = plan()
    assert roomy.checkpointed_layers == 0 and not roomy.offload_checkpoints
    assert roomy.cuda_graphs and roomy.wide_loss_chunks and roomy.fused_lora and roomy.varlen_attention
    assert roomy.lean and roomy.deferred_logging and roomy.async_batch_copy
    assert not roomy.embedding_on_cpu and roomy.optimizer == "adamw_torch_fused"
    assert "CUDA graphs" in roomy.describe() and "0 of 32 layers checkpointed" in roomy.describe()


def test_a_small_card_checkpoints_everything_offloads_and_pages_the_optimizer_only_where_it_must():
    tight = plan(budget=8)
    assert (tight.checkpointed_layers, tight.offload_checkpoints) == (32, True)
    # priced at 7.85 GiB: the AdamW state fits on the device beside the rest, torch's fused AdamW runs
    assert tight.memory_tight and tight.embedding_on_cpu and tight.optimizer == "adamw_torch_fused"
    # half a GiB less: it does not, and paged AdamW's state may move to host memory
    tighter = plan(budget=7.5)
    assert tighter.page_optimizer_state and tighter.optimizer == "paged_adamw_32bit"
    assert "paged_adamw_32bit" in tighter.describe()
    assert not tight.wide_loss_chunks  # only where nothing is checkpointed
    # the checkpointed layers' graphs cost memory that 8 GiB does not have: they stay eager there
    assert not tight.checkpoint_graphs and not tight.cuda_graphs
    # eager layers keep their dropout masks: seeded dropout's launches would cost the host more
    assert tight.dropout_kernels and not tight.seeded_dropout and "seeded" not in tight.describe()
    # 12 GiB: all layers but one checkpointed (seeded dropout keeps no masks: one layer's activations
    # fit where they did not), replayed as CUDA graphs up to rows of CHECKPOINT_GRAPH_MAX_TOKENS
    roomier = plan(budget=12)
    assert (roomier.checkpointed_layers, roomier.offload_checkpoints) == (31, False)
    assert roomier.seeded_dropout and "seeded dropout" in roomier.describe()
    masks = plan_run(qlora(), SpeedSettings(seeded_dropout="off"), H100, LLAMA2_7B, budget_gib=12, liger=True)
    assert not masks.seeded_dropout and masks.checkpointed_layers == 32
    # training passes whether the kernels load: without Triton the masks are kept, and priced
    no_kernels = plan_run(
        qlora(), SpeedSettings(), H100, LLAMA2_7B, budget_gib=12, liger=True, dropout_kernels=False
    )
    assert not no_kernels.seeded_dropout and no_kernels.checkpointed_layers == 32
    assert roomier.checkpoint_graphs and "checkpointed layers too" in roomier.describe()
    assert not plan(qlora(max_length=16384), budget=12).checkpoint_graphs
    assert plan(qlora(tokens_per_step=2048), budget=12).checkpoint_graphs
    assert not plan().checkpoint_graphs  # nothing checkpointed


def test_the_optimizer_is_fused_adamw_unless_a_quantized_base_is_tight_on_memory():
    assert plan(qlora(method="lora"), budget=8).optimizer == "adamw_torch_fused"
    # DeepSpeed keeps the choice from before fused AdamW existed; its offload configs hold the state on the host
    assert plan(qlora(deepspeed="zero2")).optimizer == "paged_adamw_32bit"
    assert plan(qlora(method="lora", deepspeed="zero2_offload")).optimizer == "adamw_torch"
    assert plan(hw=CPU, budget=64, liger=False).optimizer == "adamw_torch"
    assert plan(qlora(optimizer="adamw_8bit"), budget=8).optimizer == "adamw_8bit"  # asked for by name


def test_deepspeed_and_several_processes_turn_off_what_was_measured_on_one():
    zero2 = plan(qlora(deepspeed="zero2"))
    assert not zero2.fused_lora and not zero2.cuda_graphs and not zero2.deferred_logging
    assert not zero2.async_batch_copy and zero2.checkpointed_layers == 32  # free memory cannot be planned
    two = plan(processes=2)  # DDP: each GPU holds the whole model, so it prices like one process
    assert not two.lean and not two.cuda_graphs and two.checkpointed_layers == plan().checkpointed_layers < 32
    one, get = plan(), qlora().get
    ddp_extra = (
        price(get, replace(one, processes=2), LLAMA2_7B, H100).total_gib
        - price(get, one, LLAMA2_7B, H100).total_gib
    )
    assert abs(ddp_extra - 159_907_840 * 4 / 2**30) < 0.01  # DDP's fp32 gradient buckets (Llama-2-7B r64)
    two_tight = plan(processes=2, budget=8)  # offloaded checkpoints were measured in one process only
    assert two_tight.checkpointed_layers == 32 and not two_tight.offload_checkpoints
    assert plan(budget=8).offload_checkpoints
    full = plan(qlora(method="full", quantization="none"))
    assert not full.fused_lora and not full.cuda_graphs and not full.embedding_on_cpu
    dora = plan(qlora(use_dora=True))  # peft's own forward; its graphs are not measured
    assert not dora.fused_lora and not dora.cuda_graphs and plan(qlora(use_rslora=True)).fused_lora


def test_the_anchor_loss_gets_a_plan_that_can_run_the_model_with_its_adapter_off():
    # the second, adapter-off forward pass cannot replay CUDA graphs captured with the adapter on, nor
    # read the ids of a host-memory embedding twice: the planner leaves both out (training would refuse)
    roomy, tight = plan(qlora(anchor_kl_weight=4.0)), plan(qlora(anchor_kl_weight=4.0), budget=8)
    assert plan().cuda_graphs and not roomy.cuda_graphs and roomy.fused_lora
    assert plan(budget=8).embedding_on_cpu and not tight.embedding_on_cpu and tight.memory_tight
    assert plan(qlora(anchor_kl_weight=4.0, embedding_on_cpu="on"), budget=8).embedding_on_cpu  # asked for
    assert plan(qlora(anchor_kl_weight=0.0)).cuda_graphs
    assert plan(qlora(anchor_kl_weight=4.0, task="pretrain")).cuda_graphs  # no anchor loss in pretraining


def test_each_setting_turns_its_mechanism_off():
    off = SpeedSettings(attention="sdpa", fused_lora=False, cuda_graphs=False, liger="on", lean_steps=False)
    plain = plan(settings=off)
    assert not plain.varlen_attention and not plain.fused_lora and not plain.cuda_graphs
    assert plain.liger and not plain.wide_loss_chunks and not plain.lean and not plain.deferred_logging
    assert plan(settings=SpeedSettings(kbit_upcast=True)).kbit_upcast


def test_liger_needs_a_gpu_the_setting_and_weights_zero3_does_not_partition(tmp_path):
    assert liger_applies(qlora(), DEFAULTS, H100, installed=True)
    assert not liger_applies(qlora(), DEFAULTS, H100, installed=False)
    assert not liger_applies(qlora(), DEFAULTS, CPU, installed=True)
    assert not liger_applies(qlora(), SpeedSettings(liger="off"), H100, installed=True)
    custom = tmp_path / "ds.json"
    custom.write_text('{"zero_optimization": {"stage": 3}}')
    stages = {
        "zero2": True,
        "zero2_offload": True,
        "zero3": False,
        "zero3_offload": False,
        str(custom): False,
    }
    for value, applies in stages.items():  # the JSON's stage decides, not the file's name
        assert liger_applies(qlora(deepspeed=value), DEFAULTS, H100, installed=True) is applies, value


def test_the_embedding_policy_of_the_config():
    assert plan(qlora(embedding_on_cpu="on")).embedding_on_cpu  # even with room
    assert not plan(qlora(embedding_on_cpu="off"), budget=8).embedding_on_cpu  # even when tight
    assert not plan(qlora(embedding_on_cpu="on", deepspeed="zero2")).embedding_on_cpu


def test_checkpointing_every_layer_when_asked_or_not_decidable():
    base = plan()
    assert checkpoint_plan(qlora(gradient_checkpointing=False), base, LLAMA2_7B, H100, 4)[:2] == (0, False)
    # no CUDA, DeepSpeed (its stages split what a GPU holds): the free memory cannot be planned against
    assert checkpoint_plan(qlora(method="lora"), plan(hw=CPU), LLAMA2_7B, CPU, 4)[:2] == (32, False)
    assert checkpoint_plan(qlora(), plan(qlora(deepspeed="zero2")), LLAMA2_7B, H100, 79.2)[:2] == (32, False)
    # several processes without DeepSpeed (DDP) plan like one, without offloading
    assert checkpoint_plan(qlora(), plan(processes=2), LLAMA2_7B, H100, 79.2)[:2] == (0, False)
    assert checkpoint_plan(qlora(checkpoint_layers="all"), base, LLAMA2_7B, H100, 79.2) == (
        32,
        False,
        True,
        False,
    )
    assert checkpoint_plan(qlora(checkpoint_layers="offload"), base, LLAMA2_7B, H100, 79.2) == (
        32,
        True,
        True,
        False,
    )
    # every layer asked for on a small card: their graphs do not fit, the checkpointing stays eager
    assert checkpoint_plan(qlora(checkpoint_layers="all"), base, LLAMA2_7B, H100, 6) == (
        32,
        False,
        False,
        False,
    )
    # host memory already
    assert checkpoint_plan(qlora(method="lora", checkpoint_layers="offload"), base, LLAMA2_7B, CPU, 64)[
        :2
    ] == (
        32,
        False,
    )


def test_a_plan_with_another_count_stays_consistent():
    roomy = plan()
    tight = roomy.with_checkpointing(32, True)
    assert tight.memory_tight and not tight.wide_loss_chunks and tight.optimizer == "adamw_torch_fused"
    assert not roomy.checkpoint_graphs and tight.checkpoint_graphs
    assert roomy.with_checkpointing(99, False).checkpointed_layers == 32
    paging = replace(tight, page_optimizer_state=True)
    assert paging.optimizer == "paged_adamw_32bit" and roomy.optimizer == "adamw_torch_fused"
    saved = paging.as_dict()
    assert saved["checkpointed_layers"] == 32 and saved["optimizer"] == "paged_adamw_32bit"
    assert saved["checkpoint_graphs"] is True and saved["embedding_on_cpu"] is True


@pytest.mark.parametrize("budget", [8, 12, 24, 79.2])
def test_the_estimate_prices_the_plan_training_makes(budget):
    from tuner.plan.estimate import estimate

    planned = plan(budget=budget)
    priced = estimate(qlora(), LLAMA2_7B, H100, settings=DEFAULTS, liger=True, budget_gib=budget)
    assert (priced.checkpointed_layers, priced.offloaded) == (
        planned.checkpointed_layers,
        planned.offload_checkpoints and planned.checkpointed_layers > 0,
    )
    assert priced.graphs == planned.cuda_graphs and priced.embedding_on_cpu == planned.embedding_on_cpu


def test_a_cpu_plan_does_not_say_the_embedding_moved_to_host_memory():
    # Every layer checkpointed on a CPU: the embedding is asked into host memory (the mechanism then
    # explains that it stays), but the plan's description does not claim a move that cannot happen.
    cpu = plan(hw=CPU, budget=64, liger=False)
    assert cpu.memory_tight and cpu.embedding_on_cpu
    assert "embedding in host memory" not in cpu.describe()
    assert "embedding in host memory" in plan(budget=8).describe()


def test_rebuilt_activations_buy_fewer_checkpointed_layers_only_where_memory_is_tight():
    on = SpeedSettings(rebuild_activations=True)
    # off by default until a GPU has measured it: the plans stay those of before
    assert not plan(budget=24).rebuild_activations and plan(budget=24).checkpointed_layers == 11
    card = plan(settings=on, budget=24)
    assert card.rebuild_activations and card.checkpointed_layers == 3
    assert "cheap activations rebuilt" in card.describe() and card.as_dict()["rebuild_activations"]
    # priced: every kept layer keeps the gated product (2 bytes x 11008 / 4096) and, with Liger, the
    # two norm outputs (2 bytes each) less per token per hidden unit
    get = qlora().get
    kept = price(get, replace(card, rebuild_kept=False), LLAMA2_7B, H100)
    rebuilt = price(get, card, LLAMA2_7B, H100)
    per_layer = 4096 * 4096 * (2 * 11008 / 4096 + 4) / 2**30
    assert kept.activations_gib - rebuilt.activations_gib == pytest.approx((32 - 3) * per_layer)
    no_liger = plan(settings=on, budget=24, liger=False)
    assert price(get, replace(no_liger, rebuild_kept=False), LLAMA2_7B, H100).activations_gib - price(
        get, no_liger, LLAMA2_7B, H100
    ).activations_gib == pytest.approx((32 - no_liger.checkpointed_layers) * 4096 * 11008 * 2 / 2**30)
    # where every layer keeps its activations without it, nothing is rebuilt (its kernels cost time)
    assert plan(settings=on).checkpointed_layers == 0 and not plan(settings=on).rebuild_activations
    # every layer checkpointed (eager 8 GiB): no layer keeps anything to rebuild
    assert not plan(settings=on, budget=8).rebuild_activations
    # dropout masks kept (no seeds): the LoRA keeps dropped-out copies, not the activations themselves
    masks = plan(settings=replace(on, seeded_dropout="off"), budget=24)
    assert not masks.rebuild_activations and masks.checkpointed_layers == 19
    no_dropout = plan(qlora(lora_dropout=0), settings=replace(on, seeded_dropout="off"), budget=24)
    assert no_dropout.rebuild_activations
    # peft's fp32 upcast makes the LoRA cast its input to a copy; unknown layers price no saving
    assert not plan(settings=replace(on, kbit_upcast=True), budget=24).rebuild_activations
    other = plan_run(qlora(), on, H100, replace(LLAMA2_7B, family="internlm2"), budget_gib=24, liger=True)
    assert other.checkpointed_layers == 11 and not other.rebuild_activations


def test_the_dropout_inside_the_lora_product_only_where_the_dropout_is_seeded():
    asked = SpeedSettings(dropout_product=True)
    assert not plan(budget=24).seeded_product  # off by default until a GPU has measured it
    graphed = plan(settings=asked, budget=24)
    assert graphed.seeded_product and "seeded dropout in the product" in graphed.describe()
    # eager plans keep the masks (no seeds): nothing to make inside the product
    assert not plan(settings=asked, budget=8).seeded_product
    assert not plan(settings=replace(asked, seeded_dropout="off"), budget=24).seeded_product
    # the memory plan is the same with it: the dropped-out copy it saves lived only until the product
    assert graphed.checkpointed_layers == plan(budget=24).checkpointed_layers


def test_seeded_dropout_in_eager_plans_only_when_asked_for_measuring():
    always = SpeedSettings(seeded_dropout="always")
    eager = plan(settings=always, budget=8)
    assert (eager.checkpointed_layers, eager.checkpoint_graphs) == (32, False)
    assert eager.seeded_dropout and not plan(budget=8).seeded_dropout
    # its recomputed layer keeps no masks either, priced as with regeneration: the same plan and price
    get = qlora().get
    assert (
        price(get, eager, LLAMA2_7B, H100).total_gib == price(get, plan(budget=8), LLAMA2_7B, H100).total_gib
    )
    with_product = plan(settings=replace(always, dropout_product=True), budget=8)
    assert with_product.seeded_product and "seeded dropout in the product" in with_product.describe()
    assert not plan(settings=SpeedSettings(seeded_dropout="off"), budget=24).seeded_dropout
