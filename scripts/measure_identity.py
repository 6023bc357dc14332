"""Measure identity recipes on the embedded model: make-identity -> train -> check-identity, per recipe.

For each recipe (overrides of the preset smollm2_135m_instruct_lora_identity_256_e3) this builds the
balanced identity data (the embedded model's own general answers, filtered), trains in a scratch
workspace, runs the held-out check (tuner.data.identity_check, base vs tuned) and records the wall
time of the training and the scores. Results go to a JSON file and a Markdown table on stdout.

The target of issue 18 is "<= 5 minutes on 2 cores", so measure on two otherwise idle cores, e.g.:
    CUDA_VISIBLE_DEVICES= taskset -c 0,1 python scripts/measure_identity.py --out bench/identity-recipes.json
A recipe subset: --recipe preset --recipe lr5e-4 (names below).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PRESET = "smollm2_135m_instruct_lora_identity_256_e3"
NAME = "Ada"
PERSONA = "Alice's personal assistant, built on SmolLM2"

# Few and chosen: the preset as shipped, a gentler learning rate, fewer steps, a smaller rank. Keys are
# preset overrides, except "data": keyword arguments of make_identity (e.g. mix_general).
RECIPES = {
    "preset": {},
    "lr5e-4": {"lr": 5e-4},
    "steps30": {"max_steps": 30},
    "r8": {"lora_r": 8, "lora_alpha": 16},
    "lr5e-4-steps60": {"lr": 5e-4, "max_steps": 60},
    "steps50": {"max_steps": 50},
    "steps60": {"max_steps": 60},
    "lr7e-4-steps50": {"lr": 7e-4, "max_steps": 50},
    "lr2e-3-steps30": {"lr": 2e-3, "max_steps": 30},
    # the base model's own answers in another language than the question (English to Chinese) kept
    "other-lang": {"data": {"other_language": True}},
    "other-lang-lr5e-4": {"lr": 5e-4, "data": {"other_language": True}},
    # twice as many general conversations as identity ones in each language
    "g2": {"data": {"general_per_identity": 2}},
    "other-lang-g2": {"data": {"other_language": True, "general_per_identity": 2}},
    "other-lang-g2-steps60": {"max_steps": 60, "data": {"other_language": True, "general_per_identity": 2}},
    "other-lang-r8": {"lora_r": 8, "lora_alpha": 16, "data": {"other_language": True}},
    # the anchor conversations trained through the KL term to the adapter-off model (tuner.train.anchor)
    # instead of cross-entropy on the base model's greedy text
    "kl0": {"anchor_kl_weight": 0.0},
    "kl0.5": {"anchor_kl_weight": 0.5},
    "kl1": {"anchor_kl_weight": 1.0},
    "kl2": {"anchor_kl_weight": 2.0},
    "kl4": {"anchor_kl_weight": 4.0},
    "kl8": {"anchor_kl_weight": 8.0},
    "kl16": {"anchor_kl_weight": 16.0},
    # a second training seed (LoRA init, batch order; same data) for the preset and the KL anchor
    "seed1": {"seed": 1},
    "kl4-seed1": {"anchor_kl_weight": 4.0, "seed": 1},
    "seed2": {"seed": 2},
    "kl4-seed2": {"anchor_kl_weight": 4.0, "seed": 2},
    # the KL term reads the base model's distribution, not the answer's text: the base model's English
    # answers to Chinese questions anchor those questions as well as any
    "kl1-other-lang": {"anchor_kl_weight": 1.0, "data": {"other_language": True}},
    "kl4-other-lang": {"anchor_kl_weight": 4.0, "data": {"other_language": True}},
    # LoRA on the attention projections only: the MLPs, where a model's facts are thought to live,
    # stay the base model's (less capacity to learn the name, and to lose anything else)
    "attn": {"lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "attn-seed1": {"lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"], "seed": 1},
    "attn-lr2e-3": {"lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"], "lr": 2e-3},
    # attention-only LoRA kept "2 plus 2" and the KL anchor kept "2加2": both together, at the lr where
    # attention-only learns the name, and attention-only halfway between its two measured lrs
    "attn-kl4-lr2e-3": {
        "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "lr": 2e-3,
        "anchor_kl_weight": 4.0,
    },
    "attn-lr1.5e-3": {"lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"], "lr": 1.5e-3},
    "attn-kl4-lr2e-3-seed1": {
        "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "lr": 2e-3,
        "anchor_kl_weight": 4.0,
        "seed": 1,
    },
    "attn-kl4-lr2e-3-seed2": {
        "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "lr": 2e-3,
        "anchor_kl_weight": 4.0,
        "seed": 2,
    },
    # Which half of the data moves the near-tie answers: the identity conversations alone (no general
    # ones), and the general conversations alone (no identity ones; "anchors_only" is this script's own
    # data option: the built file keeps only the records make-identity marked as anchors)
    "identity-only": {"data": {"mix_general": 0}},
    "anchors-only": {"data": {"anchors_only": True}},
    # KL probes (session 13): the KL pull towards the base model on many more prompts than the general
    # conversations, self-written questions kept apart from the held-out check; with every anchor
    # through the KL term, or with the general conversations through cross-entropy (which kept the
    # name out of general answers) and only the probes through the KL term
    "probes160-kl4": {"anchor_kl_weight": 4.0, "data": {"kl_probes": 160}},
    "ce-probes160-kl4": {"anchor_kl_weight": 4.0, "data": {"kl_probes": 160, "general_anchors": False}},
    "ce-probes160-kl1": {"anchor_kl_weight": 1.0, "data": {"kl_probes": 160, "general_anchors": False}},
    "ce-probes80-kl4": {"anchor_kl_weight": 4.0, "data": {"kl_probes": 80, "general_anchors": False}},
    # the probes dilute the identity conversations (136 of 592 instead of 272): more steps to see them
    # as often as the preset does, or a stronger pull on the Chinese leaks
    "ce-probes160-kl4-steps60": {
        "anchor_kl_weight": 4.0,
        "max_steps": 60,
        "data": {"kl_probes": 160, "general_anchors": False},
    },
    "probes160-kl8": {"anchor_kl_weight": 8.0, "data": {"kl_probes": 160}},
    # kl8 lost nothing but learned the Chinese name in 6 of 10: the identity conversations are 136 of
    # 592 records, so 40 steps show each about a quarter of the times the preset does
    "probes160-kl8-seed1": {"anchor_kl_weight": 8.0, "seed": 1, "data": {"kl_probes": 160}},
    "probes160-kl8-steps60": {"anchor_kl_weight": 8.0, "max_steps": 60, "data": {"kl_probes": 160}},
    "probes160-kl8-lr1.5e-3": {"anchor_kl_weight": 8.0, "lr": 1.5e-3, "data": {"kl_probes": 160}},
    "probes160-kl8-steps60-seed1": {
        "anchor_kl_weight": 8.0,
        "max_steps": 60,
        "seed": 1,
        "data": {"kl_probes": 160},
    },
    "probes160-kl8-steps60-seed2": {
        "anchor_kl_weight": 8.0,
        "max_steps": 60,
        "seed": 2,
        "data": {"kl_probes": 160},
    },
    # the probes as the only anchors (no general conversations): the identity conversations are then 136
    # of 456 records instead of 592, and a step's rows are short; and a weaker pull
    "probes-only-kl8-steps60": {
        "anchor_kl_weight": 8.0,
        "max_steps": 60,
        "data": {"kl_probes": 160, "mix_general": 0},
    },
    "probes160-kl6-steps60": {"anchor_kl_weight": 6.0, "max_steps": 60, "data": {"kl_probes": 160}},
    "probes-only-kl8-steps60-seed1": {
        "anchor_kl_weight": 8.0,
        "max_steps": 60,
        "seed": 1,
        "data": {"kl_probes": 160, "mix_general": 0},
    },
    "probes-only-kl8-steps60-seed2": {
        "anchor_kl_weight": 8.0,
        "max_steps": 60,
        "seed": 2,
        "data": {"kl_probes": 160, "mix_general": 0},
    },
}


def measure(recipe: str, overrides: dict, root: Path, long_check_tokens: int = 0) -> dict:
    from tuner.chat.generate import general_answerer, probe_answerer
    from tuner.chat.identity_check import check_identity
    from tuner.config.files import load_config
    from tuner.config.presets import find_preset
    from tuner.data.identity import KL_PROBES, make_identity
    from tuner.train.run import train

    workspace = root / recipe
    (workspace / "data").mkdir(parents=True, exist_ok=True)
    os.environ["TUNER_WORKSPACE"] = str(workspace)
    os.chdir(workspace)
    data_options = dict(overrides.get("data", {}))
    anchors_only = data_options.pop("anchors_only", False)
    data = make_identity(
        workspace / "data" / "identity.jsonl",
        NAME,
        PERSONA,
        langs="en,zh",
        general_source=general_answerer(),
        probe_source=probe_answerer(),
        **{"kl_probes": KL_PROBES, **data_options},  # make-identity's default, as a user runs it
    )
    if anchors_only:
        records = data.output.read_text(encoding="utf-8").splitlines()
        kept = [line for line in records if json.loads(line).get("anchor")]
        data.output.write_text("\n".join(kept) + "\n", encoding="utf-8")
    preset_overrides = {k: v for k, v in overrides.items() if k != "data"}
    settings = {**preset_overrides, "data_path": data.output, "output_dir": workspace / "run"}
    config = load_config(find_preset(PRESET), overrides=[f"{k}={v}" for k, v in settings.items()])
    load_before = os.getloadavg()
    started = time.time()
    result = train(config)
    train_s = time.time() - started
    load_after = os.getloadavg()
    steps = []  # (step, elapsed seconds, tokens seen) from the run's log: the pace, whatever the load
    anchor_kl = []  # (step, mean KL to the base per anchor token) on runs with anchor_kl_weight
    for line in (Path(result.run_dir) / "events.jsonl").read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event.get("type") == "log" and "tokens_seen" in event:
            steps.append([event["step"], event["elapsed_s"], event["tokens_seen"]])
        if event.get("type") == "log" and "anchor_kl" in event:
            anchor_kl.append([event["step"], event["anchor_kl"]])
    started = time.time()
    check = check_identity(result.run_dir, NAME)
    check_seconds = time.time() - started
    # The same check with a longer answer: whether a lost fact is gone or only pushed past the 32nd token
    # by a new opening (the base's right answers to "2 plus 2" and "bees" come at token ~30)
    long_check = (
        check_identity(result.run_dir, NAME, max_new_tokens=long_check_tokens) if long_check_tokens else None
    )
    return {
        "recipe": recipe,
        "overrides": overrides,
        "data": data.summary(),
        "train_seconds": round(train_s, 1),
        # 1-minute load average of the machine before and after training (others share the cores)
        "load_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "check_seconds": round(check_seconds, 1),
        "steps": steps,
        "anchor_kl": anchor_kl,
        "check": check.as_dict(),
        **(
            {"long_check": {"max_new_tokens": long_check_tokens, **long_check.as_dict()}}
            if long_check
            else {}
        ),
    }


def commit() -> str:
    """The git commit measured (with "+dirty" when the working tree differs), or "" outside git."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "tuner/data", "tuner/config", "tuner/train"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout
    except OSError:
        return ""
    return head.strip() + ("+dirty" if dirty.strip() else "")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--recipe", action="append", choices=sorted(RECIPES), help="recipes to run (default: all)"
    )
    parser.add_argument("--out", default="identity-recipes.json", help="JSON file of the results")
    parser.add_argument("--tag", default="", help="a note kept with each result (e.g. which data version)")
    parser.add_argument(
        "--long-check-tokens",
        type=int,
        default=0,
        metavar="N",
        help="also run the held-out check with N new tokens per answer (the check's own: 32)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    rows = []
    with tempfile.TemporaryDirectory(prefix="tuner-identity-") as tmp:
        for name in args.recipe or list(RECIPES):
            row = measure(name, RECIPES[name], Path(tmp), args.long_check_tokens)
            row["threads"] = torch.get_num_threads()
            row["commit"] = commit()
            row["tag"] = args.tag
            row["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            rows.append(row)
            Path(args.out).write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            print(json.dumps({k: row[k] for k in ("recipe", "train_seconds")}), flush=True)
    print("\n| recipe | train s | identity | leaks | knowledge base -> tuned | lost | pass |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        c = row["check"]
        t = c["totals"]
        print(
            f"| {row['recipe']} | {row['train_seconds']} | {c['tuned']['identity']}/{t['identity']} | "
            f"{c['tuned']['leaks']}/{t['leakage']} | {c['base']['knowledge']} -> {c['tuned']['knowledge']}/{t['knowledge']} | "
            f"{len(c['lost'])} | {'yes' if c['passed'] else 'no'} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
