"""``python -m tuner export RUN_OR_CHECKPOINT OUT_DIR`` and ``python -m tuner merge BASE ADAPTER OUT_DIR``."""

from __future__ import annotations

from tuner.core.errors import TunerError


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
    merge.add_argument(
        "--gguf", metavar="TYPE", help="also write OUT_DIR/model.gguf for llama.cpp / Ollama: f16, bf16, f32 or q8_0"
    )
    merge.set_defaults(func=run_merge)

    gguf = sub.add_parser(
        "export-gguf",
        help="write a merged model (or a run, merged on the way) as one GGUF file for llama.cpp / Ollama",
        description=(
            "Write SOURCE as a GGUF file: weights, tokenizer, the training chat template and its end-of-turn "
            "token. SOURCE is a merged model folder, or a run / adapter folder, which is merged into its "
            "base first (in a temporary folder). Llama 3.x, SmolLM2, Qwen2/2.5/3, Mistral 7B v0.3, Gemma 2, "
            "Gemma 3 (text), Phi-3.5-mini and Phi-4-mini; other families are refused with the reason. "
            "q4_k_m: write f16, then llama.cpp's llama-quantize."
        ),
    )
    gguf.add_argument("source", help="merged model folder, run folder, checkpoint or adapter folder")
    gguf.add_argument("out", help="the .gguf file to write")
    gguf.add_argument("--type", default="f16", help="f16 (default), bf16, f32 or q8_0")
    gguf.add_argument("--base", help="with a run or adapter: its base model (default: the run's model)")
    gguf.add_argument("--template", help="chat template name; default: the one the adapter was trained with")
    gguf.add_argument("--force", action="store_true", help="replace an existing OUT")
    gguf.set_defaults(func=run_export_gguf)


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
    if args.gguf:
        from tuner.export.gguf import check_type

        check_type(args.gguf)
    result = merge_adapter(
        args.base,
        args.adapter,
        args.out_dir,
        gguf=args.gguf,
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
    if result.gguf:
        print(f"GGUF: {result.out_dir / result.gguf}; Ollama: `ollama create NAME -f {result.out_dir}/Modelfile`")
    else:
        print(f"Ollama: add --gguf f16 (or tuner export-gguf), then `ollama create NAME -f {result.out_dir}/Modelfile`")
    if args.push:
        print(f"uploaded: {push_folder(result.out_dir, args.push)}")
    return 0


def run_export_gguf(args) -> int:
    import tempfile
    from pathlib import Path

    from tuner.export.gguf import check_type, write_gguf

    check_type(args.type, args.out)
    source, out = Path(args.source), Path(args.out)
    if out.exists() and not args.force:
        raise TunerError(f"{out} exists; pass --force to replace it")
    if (source / "config.json").is_file() and not (source / "adapter_config.json").is_file():
        result = write_gguf(source, out, kind=args.type, force=args.force, template=_template(args.template, source))
    else:
        from tuner.export.merge import merge_adapter
        from tuner.runs.adapters import locate_adapter

        base = args.base or locate_adapter(source).config.get("model")
        if not base:
            raise TunerError(f"{source}: cannot tell its base model; give --base MODEL")
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".merge-") as folder:
            merged = merge_adapter(base, source, Path(folder) / "merged", template=args.template, verify=False)
            result = write_gguf(merged.out_dir, out, kind=args.type, force=args.force,
                                template=_template(merged.template, merged.out_dir))
    print(f"GGUF ({result.architecture}, {result.type}, {result.tensors} tensors, end of turn "
          f"{result.eot_token!r}): {result.path}")
    return 0


def _template(name: str | None, folder):
    if not name:
        return None
    from transformers import AutoTokenizer

    from tuner.chat.text import resolve_chat_template

    return resolve_chat_template(AutoTokenizer.from_pretrained(str(folder)), name)
