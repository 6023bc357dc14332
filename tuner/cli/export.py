"""``python -m tuner export RUN_OR_CHECKPOINT OUT_DIR`` and ``python -m tuner merge BASE ADAPTER OUT_DIR``."""

from __future__ import annotations


def register(sub) -> None:
    export = sub.add_parser(
        "export",
        help="turn a run or checkpoint into a clean, shareable adapter folder",
        description=(
            "Write a PEFT adapter folder (adapter_config.json, adapter_model.safetensors), the tokenizer "
            "with the training chat template, a README.md model card and the run's config.yaml. "
            "A run folder gives its final adapter/, else its last complete checkpoint."
        ),
    )
    export.add_argument(
        "source", help="run folder (work_dirs/<name>/<time>), checkpoint-N folder or adapter folder"
    )
    export.add_argument("out_dir", help="folder to write (must be new or empty unless --force)")
    export.add_argument("--force", action="store_true", help="replace an existing non-empty OUT_DIR")
    export.add_argument(
        "--push", metavar="REPO_ID", help="also upload the folder to the Hugging Face Hub (private repo)"
    )
    export.add_argument(
        "--trust-remote-code", action="store_true", help="allow the model's own tokenizer code"
    )
    export.set_defaults(func=run_export)

    merge = sub.add_parser(
        "merge",
        help="merge an adapter into its base model and save a standalone model",
        description=(
            "Merge a LoRA or QLoRA adapter into the unquantized base model, check the weights, save "
            "sharded safetensors with tokenizer, chat template, generation config and an Ollama Modelfile, "
            "then reload the result and print one test reply."
        ),
    )
    merge.add_argument("base", help="base model: local folder, hub id or 'default' (never a 4-bit copy)")
    merge.add_argument("adapter", help="adapter folder, exported adapter, checkpoint or run folder")
    merge.add_argument("out_dir", help="folder to write (must be new or empty unless --force)")
    merge.add_argument(
        "--max-shard-size", default="2GB", help="largest weight file, e.g. 2GB or 500MB (default 2GB)"
    )
    merge.add_argument(
        "--dtype",
        choices=["auto", "fp16", "bf16", "fp32"],
        default="auto",
        help="dtype of the merged weights; auto = the base model's own (default)",
    )
    merge.add_argument("--template", help="chat template name; default: the one the adapter was trained with")
    merge.add_argument("--force", action="store_true", help="replace an existing non-empty OUT_DIR")
    merge.add_argument("--no-verify", dest="verify", action="store_false", help="skip the test reply")
    merge.add_argument(
        "--push",
        metavar="REPO_ID",
        help="also upload the merged model to the Hugging Face Hub (private repo)",
    )
    merge.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code")
    merge.set_defaults(func=run_merge)


def run_export(args) -> int:
    from tuner.export.adapter import export_adapter
    from tuner.export.hub import hub_token, push_folder

    if args.push:
        hub_token()
    result = export_adapter(
        args.source, args.out_dir, force=args.force, trust_remote_code=args.trust_remote_code
    )
    print(f"adapter: {result.source.adapter_dir}")
    print(f"template: {result.template}")
    print(f"exported to {result.out_dir}")
    if args.push:
        print(f"uploaded: {push_folder(result.out_dir, args.push)}")
    return 0


def run_merge(args) -> int:
    from tuner.export.hub import hub_token, push_folder
    from tuner.export.merge import check_shard_size, merge_adapter

    check_shard_size(args.max_shard_size)
    if args.push:
        hub_token()
    result = merge_adapter(
        args.base,
        args.adapter,
        args.out_dir,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        template=args.template,
        force=args.force,
        verify=args.verify,
        trust_remote_code=args.trust_remote_code,
    )
    print(
        f"merged model ({result.dtype}, template {result.template}, eos ids {result.eos_token_ids}): {result.out_dir}"
    )
    if result.reply is not None:
        print(f"test reply (ended on the end-of-turn token): {result.reply}")
    print(f"Ollama: convert to GGUF, then `ollama create NAME -f {result.out_dir}/Modelfile`")
    if args.push:
        print(f"uploaded: {push_folder(result.out_dir, args.push)}")
    return 0
