"""The ``whisperkit`` command: transcribe, backends, convert, conformance."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .errors import WhisperkitError


def _fmt_ts(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    h, m = divmod(int(m), 60)
    return (f"{h:d}:" if h else "") + f"{m:02d}:{s:06.3f}"


def cmd_transcribe(args) -> int:
    from .api import Whisper
    from .threads import set_num_threads
    if args.threads:
        set_num_threads(args.threads)
    model = Whisper(args.model, backend=args.backend)
    for path in args.audio:
        options = dict(temperature=args.temperature, language=args.language, task=args.task,
                       condition_on_previous_text=args.condition_on_previous_text,
                       initial_prompt=args.initial_prompt)
        result = model.transcribe(path, **options)
        if args.json:
            print(json.dumps(result.to_dict(), ensure_ascii=False))
            continue
        if len(args.audio) > 1:
            print(f"# {path}")
        for s in result.segments:
            print(f"[{_fmt_ts(s.start)} --> {_fmt_ts(s.end)}] {s.text.strip()}")
        print()
        print(result.text.strip())
    return 0


def cmd_backends(args) -> int:
    from .registry import get_registry
    reg = get_registry()
    rows = []
    for name in reg.names():
        i = reg.infos[name]
        rows.append((name, i.version, "yes" if i.usable else "no", ", ".join(i.ops) or "-", i.reason))
    if args.json:
        print(json.dumps([dict(zip(("name", "version", "usable", "ops", "reason"), r)) for r in rows], indent=2))
        return 0
    w = [max(len(r[k]) for r in rows + [("backend", "version", "usable", "ops", "")]) for k in range(3)]
    print(f"{'backend':<{w[0]}}  {'version':<{w[1]}}  {'usable':<{w[2]}}  ops / reason")
    for name, version, usable, ops, reason in rows:
        print(f"{name:<{w[0]}}  {version:<{w[1]}}  {usable:<{w[2]}}  {ops}")
        if reason:
            print(f"{'':<{w[0] + w[1] + w[2] + 6}}unusable: {reason}")
    return 0


def cmd_convert(args) -> int:
    from .weights import resolve_model, write_hf
    weights = resolve_model(args.model)
    out = write_hf(weights, args.out_dir, dtype=args.dtype)
    print(f"wrote {weights.name} as a Hugging Face safetensors directory: {out}")
    return 0


def cmd_conformance(argv: list[str]) -> int:
    from .conformance.cli import main
    return main(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="whisperkit", description="Whisper speech recognition on the CPU through pluggable kernel backends")
    p.add_argument("-v", "--verbose", action="store_true", help="log backend fallbacks and loading")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transcribe", help="transcribe audio files")
    t.add_argument("audio", nargs="+", help="audio files (wav, flac, ogg, mp3)")
    t.add_argument("--model", default="tiny.en", help="tiny.en (bundled), base (with the base-model extra), a local directory, or a Hub repo id")
    t.add_argument("--backend", default="numpy", help="kernel backend (see `whisperkit backends`)")
    t.add_argument("--language", default=None, help="language spoken (multilingual models); detected when omitted")
    t.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    t.add_argument("--temperature", type=float, default=0.0)
    t.add_argument("--condition_on_previous_text", type=_str2bool, default=True)
    t.add_argument("--initial_prompt", default=None)
    t.add_argument("--threads", type=int, default=0, help="threads for every backend (default: all cores)")
    t.add_argument("--json", action="store_true", help="print the result as JSON (openai-whisper's shape)")
    t.set_defaults(func=cmd_transcribe)

    b = sub.add_parser("backends", help="list the registered kernel backends")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_backends)

    c = sub.add_parser("convert", help="write any loadable model as a Hugging Face safetensors directory")
    c.add_argument("model", help="tiny.en, base, a directory or a Hub repo id")
    c.add_argument("out_dir")
    c.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    c.set_defaults(func=cmd_convert)

    sub.add_parser("conformance", help="hold a backend to the reference (run `whisperkit conformance --help`)", add_help=False)
    return p


def _str2bool(v: str) -> bool:
    if v.lower() in ("true", "1", "yes"):
        return True
    if v.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {v!r}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "conformance":
        return cmd_conformance(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.func(args)
    except WhisperkitError as exc:
        print(f"whisperkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
