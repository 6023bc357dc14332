"""The anchor loss: on the base model's own answers, keep the tuned model's next-token distribution
close to the base model's.

Why: identity data mixes in general conversations answered by the base model itself, to keep ordinary
answers ordinary (tuner.data.identity). Trained on as text (cross-entropy on the base's greedy answers)
they are not neutral: they make the base model's most likely token certain, which sharpens its habits
(issue 18, docs/identity.md: "What is 2 plus 2?" came back as "To find 2 plus 2, we can use the
concept of addition with a carryover...", copied from an anchor about multiplication). The base
model's whole distribution holds what its greedy text throws away (how sure it was, what else it
might have said); pulling the tuned model towards that distribution leaves the base where it was
instead of moving it towards its own argmax.

The loss on an anchor answer token t is KL(p_base(. | prefix) || p_tuned(. | prefix)), averaged over
the anchor tokens of a micro-batch, times ``anchor_kl_weight``; anchor tokens get no cross-entropy
(tuner.data.anchors moves them to ``anchor_labels``). The base model is the model being tuned with its
LoRA adapter switched off (peft's ``disable_adapter``) and no gradients: no second copy of the
weights, one extra forward pass over the rows that hold anchor tokens, and the gradient reaches only
the adapter. At the first step (LoRA's B = 0) the tuned model is the base, so the term is exactly 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuner.core.errors import TunerError
from tuner.data.anchors import IGNORE


def anchor_loss_on(config) -> bool:
    """Whether a run trains anchor rows through the KL term (a LoRA fine-tune of chat data with a
    positive ``anchor_kl_weight``); tuner.config.validate refuses a weight where it cannot apply."""
    return bool(config.task == "sft" and (config.anchor_kl_weight or 0) > 0)


def whole_answers_mode(config) -> str:
    """How the anchors' whole answers train (config key ``anchor_answers``): "text", "kl" or "off";
    auto is "kl" when the KL term is on, else "text" (the behaviour before the key existed)."""
    how = getattr(config, "anchor_answers", "auto") or "auto"
    if how == "auto":
        return "kl" if anchor_loss_on(config) else "text"
    return how


def refuse_unsupported_plan(plan) -> None:
    """Raise TunerError when the run's plan (tuner.plan.decide.RunPlan) cannot run the adapter-off
    forward pass: no adapter (a full fine-tune), CUDA graphs (they replay the layers with the adapter
    as captured), the input embedding in host memory (it takes one batch's ids once). The planner
    (tuner.plan.decide.plan_run) already leaves the graphs out of such a run and keeps the embedding on
    the device under ``embedding_on_cpu: auto``; what reaches this is an explicit ``embedding_on_cpu:
    on`` or a plan made some other way."""
    if plan is None:
        return
    if not plan.lora:
        raise TunerError(
            "anchor_kl_weight needs a LoRA run: the base model is the model with its adapter off"
        )
    if plan.cuda_graphs:
        raise TunerError(
            "anchor_kl_weight needs the model with its adapter switched off, which CUDA graphs of the "
            "layers cannot replay; turn the graphs off (TUNER_CUDA_GRAPHS=0) or set anchor_kl_weight: 0"
        )
    if plan.embedding_on_cpu:
        raise TunerError(
            "anchor_kl_weight runs a second forward pass, and the input embedding in host memory reads "
            "its ids once per batch; set embedding_on_cpu: off or anchor_kl_weight: 0"
        )


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the next-token cross-entropy over the labelled tokens, how many there are): the
    causal LM loss of transformers' models before its division, so that the caller divides as
    Trainer would (by the tokens of the whole accumulated batch, or of this micro-batch)."""
    targets = labels[:, 1:].reshape(-1).to(logits.device)
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    total = F.cross_entropy(flat, targets, ignore_index=IGNORE, reduction="sum")
    return total, (targets != IGNORE).sum()


def kl_to_base(
    tuned_logits: torch.Tensor, base_logits: torch.Tensor, anchor_labels: torch.Tensor
) -> torch.Tensor:
    """Sum over the anchor tokens of KL(p_base || p_tuned) of the distribution that predicts each.

    The logits at position i predict token i + 1, so the anchor token at i + 1 reads position i (the
    shift of every causal LM loss). Only those positions are turned into log-probabilities.
    """
    predicts = anchor_labels[:, 1:].to(tuned_logits.device) != IGNORE
    tuned = F.log_softmax(tuned_logits[:, :-1][predicts].float(), dim=-1)
    base = F.log_softmax(base_logits[:, :-1][predicts].float(), dim=-1)
    return F.kl_div(tuned, base, log_target=True, reduction="sum")


def anchor_rows(inputs: dict, anchor_labels: torch.Tensor) -> tuple[dict, torch.Tensor | None]:
    """The batch cut down to the rows that hold anchor tokens (the base forward pass skips the rest),
    and which rows those are (None: all of them, as in a packed batch flattened into one row)."""
    rows = (anchor_labels != IGNORE).any(dim=1)
    batch = anchor_labels.shape[0]
    if batch == 1 or bool(rows.all()):
        return inputs, None
    picked = {
        key: value[rows.to(value.device)]
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch
        else value
        for key, value in inputs.items()
    }
    return picked, rows


def base_logits(peft_model, inputs: dict) -> torch.Tensor:
    """The base model's logits for ``inputs`` (no labels): the same model with its adapter off, no
    gradients."""
    with torch.no_grad(), peft_model.disable_adapter():
        return peft_model(**inputs).logits


def anchored_loss(
    model,
    peft_model,
    inputs: dict,
    anchor_labels: torch.Tensor,
    weight: float,
    ce_denominator=None,
    kl_scale: float = 1.0,
) -> tuple[torch.Tensor, object, torch.Tensor | None]:
    """(loss, the tuned model's outputs, the mean KL per anchor token or None when the batch has no
    anchor token) for one micro-batch.

    ``inputs`` holds ``labels`` (cross-entropy, anchor tokens already left out) and the model's inputs;
    ``model`` is what Trainer calls (maybe wrapped), ``peft_model`` the PeftModel inside it.
    ``ce_denominator``: the labelled tokens of the whole accumulated batch (Trainer's
    num_items_in_batch) or None for this micro-batch's; ``kl_scale`` multiplies the KL mean (1 /
    accumulation steps when Trainer does not divide the loss itself).
    """
    labels = inputs.pop("labels")
    # The model's own loss is not used: Liger's fused loss returns no logits, and the KL term needs them.
    outputs = model(**inputs)
    logits = outputs.logits
    ce_sum, ce_count = causal_lm_loss_sum(logits, labels)
    denominator = torch.as_tensor(
        ce_denominator if ce_denominator is not None else ce_count, device=ce_sum.device
    )
    # A micro-batch of anchors only has a cross-entropy sum of 0 and nothing to divide it by.
    loss = ce_sum / denominator.clamp(min=1)
    anchors = int((anchor_labels[:, 1:] != IGNORE).sum())
    if not anchors or not weight:
        return loss, outputs, None
    picked, rows = anchor_rows(inputs, anchor_labels)
    reference = base_logits(peft_model, picked)
    tuned = logits if rows is None else logits[rows.to(logits.device)]
    kept_labels = anchor_labels if rows is None else anchor_labels[rows]
    kl_mean = kl_to_base(tuned, reference, kept_labels) / anchors
    return loss + weight * kl_scale * kl_mean, outputs, kl_mean.detach()
