"""``whisperkit transcribe --ray [ADDRESS] DIR_OR_GLOB -o out/``: the command line's way into `transcribe_dataset`.
whisperkit.cli imports this only when ``--ray`` is given."""
from __future__ import annotations

import os
import re
import sys
from ..errors import WhisperkitError

#: what `--ray`'s optional value must look like to be taken as an address rather than the first input
_ADDRESS = re.compile(r"(ray://.+|auto|local|[A-Za-z0-9.\-]+:\d{1,5}|\[[0-9A-Fa-f:.]+\]:\d{1,5})")

#: errors printed on stderr at the end of a job (the manifest has them all)
_SHOWN_ERRORS = 10


def ray_argv(argv: list[str]) -> list[str]:
    """`--ray` followed by an input rather than an address is `--ray` without one: argparse would take the input
    for the address (``--ray clips/ -o out`` is ``--ray=local clips/ -o out``)."""
    argv = list(argv)
    for k, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--ray":
            value = argv[k + 1] if k + 1 < len(argv) else None
            if value is None or value.startswith("-") or os.path.exists(value) or not _ADDRESS.fullmatch(value):
                argv[k] = "--ray=local"
    return argv


def transcribe_on_ray(args, options: dict, writer_options: dict) -> int:
    """Run the job the parsed `transcribe` arguments describe, with the transcribe() options the command built
    from them; the exit status is the number of inputs that failed (at most 125)."""
    from . import transcribe_dataset
    if "-" in args.audio:
        raise WhisperkitError("--ray reads files, not standard input ('-'): give files, directories or glob patterns")
    if args.output_name:
        raise WhisperkitError("--output_name names the outputs of one input; with --ray each input's outputs are "
                              "named after it")
    if args.json:
        raise WhisperkitError("--json prints one result; with --ray the results are the JSON files in --output_dir")
    options = {k: v for k, v in options.items() if k not in ("verbose", "progress")}  # the job's own
    report = transcribe_dataset(
        args.audio, args.output_dir, model=args.model, backend=args.backend, download_root=args.model_dir,
        compute_type=getattr(args, "compute_type", "float32"),
        actors=args.actors, threads_per_actor=args.threads or None, batch_size=args.batch_size,
        address=None if args.ray == "local" else args.ray, output_format=args.output_format,
        writer_options=writer_options, progress=False if args.no_progress else None, **options)
    failed = [row for row in report.rows if row["status"] == "failed"]
    for row in failed[:_SHOWN_ERRORS]:
        print(f"whisperkit: warning: failed: {row['error']}", file=sys.stderr)
    if len(failed) > _SHOWN_ERRORS:
        print(f"whisperkit: warning: ... and {len(failed) - _SHOWN_ERRORS} more failed inputs: see the manifest",
              file=sys.stderr)
    if failed:
        print(f"whisperkit: {len(failed)} of {len(report.rows)} inputs failed; the manifest lists each with its "
              f"error: {os.path.join(report.output_dir, 'whisperkit-manifest.json')}", file=sys.stderr)
    return min(len(failed), 125)
