"""`wakeline llm calibrate`: channel ranges for the quantized tensor-parallel all-reduce."""

from __future__ import annotations

from services.cli.common import add_command


def _calibrate(args) -> int:
    import json
    import os

    from llm.parallel.calibrate import calibrate_rank

    if not os.path.isfile(os.path.join(args.model, "config.json")):
        print(f"error: {args.model} is not a model folder (no config.json)")
        return 2
    fn_args = (args.model, args.out, args.text, args.n_prompts, args.max_tokens, args.device)
    if "WORLD_SIZE" in os.environ:  # launched by torchrun: this process is one rank
        from llm.parallel.state import destroy_tp, init_tp

        st = init_tp(device=args.device)
        if st.world_size != args.tp:
            print(f"error: --tp {args.tp} but torchrun started {st.world_size} ranks")
            return 2
        summary = calibrate_rank(st.rank, st.world_size, *fn_args)
        destroy_tp()
        if st.rank:
            return 0
    else:
        if args.device != "cpu":
            print("error: for GPUs launch with torchrun --nproc-per-node N wakeline llm calibrate ...")
            return 2
        from llm.parallel.launch import run_ranks

        summary = run_ranks(calibrate_rank, args.tp, *fn_args, timeout_s=3600)[0]
    print(json.dumps(summary, indent=1))
    return 0


def register(grp) -> None:
    """Add `calibrate` to the `llm` group."""
    p = add_command(grp, "calibrate", "Record per-channel ranges of the TP reductions (for the quantized "
                    "all-reduce) and write them to a small file tied to the checkpoint and TP degree",
                    _calibrate)
    p.add_argument("--model", required=True, help="Hugging Face model folder")
    p.add_argument("--tp", type=int, required=True, help="tensor-parallel degree the file is for")
    p.add_argument("--out", required=True, help="output file (.safetensors)")
    p.add_argument("--text", default=None, help="calibration text file (.txt or .xz); default: built-in prompts")
    p.add_argument("--n-prompts", type=int, default=64, help="calibration prompts (text chunks)")
    p.add_argument("--max-tokens", type=int, default=1024, help="tokens per prompt at most")
    p.add_argument("--device", default="cpu", help="cpu (spawns --tp gloo ranks) or cuda (under torchrun)")
