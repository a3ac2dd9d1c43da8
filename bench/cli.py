"""``whisperkit-bench``: race every backend (and the peers) end to end and op by op."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .machine import apply_threads, default_audio, default_threads, find_shared_audio

EPILOG = """examples:
  whisperkit-bench --backend all
  whisperkit-bench --backend numba,onnxruntime --audio my.flac --json out.json --markdown out.md --plot out.png
  whisperkit-bench --ops                 # per-op microbenchmarks only
  whisperkit-bench --backend numpy --quick --no-peers
  whisperkit-bench --backend numpy,onnxruntime --batch 4 --no-ops --no-peers --no-cold --runs 1
  whisperkit-bench --backend all --long 60 --batch 0 --no-ops   # a 60-minute file: wall time, RTF, peak RSS
Speed never makes the bench fail: it exits non-zero only on bad arguments."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="whisperkit-bench", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="all", help="'all' (every usable backend, default) or a comma-separated list")
    ap.add_argument("--audio", action="append", type=Path, default=None,
                    help="audio file to transcribe (repeatable); default: jfk_16k.wav and osr_16k.wav of ../shared/audio")
    ap.add_argument("--model", default="tiny.en", help="model name or path (default tiny.en)")
    ap.add_argument("--runs", type=int, default=3, help="timed warm runs per engine and clip (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per engine and clip (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="threads for every engine (default: all usable cores)")
    ap.add_argument("--decoder-tokens", type=int, default=64, help="decoder steps timed for the per-token figure (default 64)")
    ap.add_argument("--ops", action="store_true", help="per-op microbenchmarks only")
    ap.add_argument("--no-ops", action="store_true", help="skip the per-op microbenchmarks")
    ap.add_argument("--no-peers", action="store_true", help="do not race faster-whisper / openai-whisper")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-start subprocesses")
    ap.add_argument("--quick", action="store_true", help="1 run, no warm-up, few decoder steps, short op timings (tests)")
    ap.add_argument("--batch", type=int, default=None, metavar="N",
                    help="batch throughput: the clips (jfk_16k, pv_en, osr_16k, pv_de or --audio) repeated to at least N "
                         "files, one at a time vs transcribe_batch(batch_size=N); default 4, off with --quick; 0 disables")
    ap.add_argument("--long", type=float, default=None, metavar="MINUTES",
                    help="also transcribe a MINUTES-long file (clips with silence and noise between them) in a fresh "
                         "process per backend: wall time, RTF, peak RSS (default: off)")
    ap.add_argument("--json", type=Path, help="write every figure as JSON here")
    ap.add_argument("--markdown", type=Path, help="write the results as markdown here (for the README)")
    ap.add_argument("--plot", type=Path, help="write a PNG bar chart of the real-time factor here")
    return ap


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.decoder_tokens < 1:
        ap.error("--runs and --decoder-tokens must be >= 1, --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.ops and args.no_ops:
        ap.error("--ops and --no-ops contradict each other")
    if args.batch is not None and args.batch < 0:
        ap.error("--batch must be >= 0 (0 disables)")
    if args.long is not None and not (args.long > 0 and math.isfinite(args.long)):
        ap.error("--long must be a positive number of minutes")
    if args.ops and (args.batch or args.long):
        ap.error("--ops runs the per-op microbenchmarks only: drop --batch / --long")
    if args.batch is None:
        args.batch = 0 if (args.quick or args.ops) else 4
    if args.quick:
        args.runs, args.warmup, args.decoder_tokens = 1, 0, min(args.decoder_tokens, 8)
    threads = args.threads or default_threads()
    thread_control = apply_threads(threads)  # before the backends build their pools

    do_e2e = not args.ops
    do_ops = not args.no_ops
    clips: list[Path] = []
    if do_e2e:
        clips = args.audio or default_audio()
        if not clips:
            ap.error("no audio: pass --audio FILE (the shared clips were not found: set WHISPERKIT_SHARED "
                     f"or run from inside the project; looked from {Path.cwd()})")
        missing = [str(p) for p in clips if not Path(p).is_file()]
        if missing:
            ap.error(f"audio file not found: {', '.join(missing)}")
    extra_clips: list[Path] = []
    if args.batch or args.long:
        from .batch import batch_clips
        extra_clips = list(args.audio) if args.audio else batch_clips()
        if not extra_clips:
            ap.error("no audio for --batch / --long: pass --audio FILE (the shared clips were not found)")
    for out in (args.json, args.markdown, args.plot):
        if out is not None and not out.resolve().parent.is_dir():
            ap.error(f"output folder does not exist: {out.resolve().parent}")

    # heavy imports only now, after the thread setting
    import numpy as np
    from tqdm import tqdm

    from whisperkit.audio import load_audio
    from whisperkit.registry import get_registry
    from whisperkit.weights import resolve_model

    from . import e2e, ops as opsmod, report
    from .engines import PEERS, BackendEngine, EngineUnavailable, make_peer, peer_available
    from .machine import machine_info, now_iso, versions

    machine = machine_info()
    reg = get_registry()
    skipped: list[dict] = []
    if args.backend.strip().lower() == "all":
        wanted = reg.names()
        for n in wanted:
            if not reg.infos[n].usable:
                skipped.append(dict(engine=n, kind="backend", reason=reg.infos[n].reason))
        selected = [n for n in wanted if reg.infos[n].usable]
    else:
        wanted = [n.strip() for n in args.backend.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in reg.infos]
        if unknown:
            ap.error(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(reg.names())}")
        selected = []
        for n in wanted:
            if reg.infos[n].usable:
                selected.append(n)
            else:
                skipped.append(dict(engine=n, kind="backend", reason=reg.infos[n].reason))
    # the reference first: its tokens are what the others are compared with
    selected.sort(key=lambda n: (n != e2e.REFERENCE, n))

    try:
        weights = resolve_model(args.model)
    except Exception as exc:
        ap.error(f"cannot load model {args.model!r}: {exc}")

    doc = dict(schema=report.SCHEMA, date=now_iso(), command="whisperkit-bench " + " ".join(argv), machine=machine,
               versions=versions(), threads=threads, thread_control=thread_control["blas"], model=weights.name,
               runs=args.runs, warmup=args.warmup, quick=args.quick, reference=e2e.REFERENCE,
               backends=[dict(name=n, usable=i.usable, version=i.version, reason=i.reason, ops=list(i.ops))
                         for n, i in sorted(reg.infos.items())],
               clips=[], skipped=skipped, roofline=None, records=[])

    all_results: list[list] = []
    op_results: dict = {}
    engines = []
    if do_e2e:
        audio = {}
        for p in clips:
            try:
                audio[p] = load_audio(p)
            except Exception as exc:
                ap.error(f"cannot read audio {p}: {exc}")
        doc["clips"] = [dict(clip=p.name, path=str(p), duration_s=len(a) / 16000) for p, a in audio.items()]
        print(f"whisperkit-bench: {len(selected)} backend(s) {', '.join(selected) or '(none)'}, {len(clips)} clip(s), "
              f"{threads} thread(s), model {weights.name}", file=sys.stderr)
        for n in selected:
            eng = BackendEngine(n, args.model, weights)
            try:
                eng.load()
                engines.append(eng)
            except Exception as exc:
                skipped.append(dict(engine=n, kind="backend", reason=f"load failed: {type(exc).__name__}: {exc}"))
        if not args.no_peers:
            for name in PEERS:
                reason = peer_available(name)
                if reason is None:
                    try:
                        peer = make_peer(name, threads, weights)
                        peer.load()
                        engines.append(peer)
                        continue
                    except EngineUnavailable as exc:
                        reason = str(exc)
                    except Exception as exc:
                        reason = f"load failed: {type(exc).__name__}: {exc}"
                skipped.append(dict(engine=name, kind="peer", reason=reason))
        for s in skipped:
            print(f"  skipped {s['engine']} ({s['kind']}): {s['reason']}", file=sys.stderr)

        ref_engine = None
        if not any(e.name == e2e.REFERENCE for e in engines) and engines:
            ref_engine = BackendEngine(e2e.REFERENCE, args.model, weights)
            ref_engine.load()
        total = len(clips) * (e2e.steps_per_clip(len(engines), args.runs, args.warmup, not args.no_cold)
                              + (1 if ref_engine else 0))
        with tqdm(total=total, desc="end to end", file=sys.stderr, unit="step", mininterval=0.5) as bar:
            for p, a in audio.items():
                ref_tokens = None
                if ref_engine is not None:
                    ref_tokens = ref_engine.transcribe(a)
                    bar.update(1)
                all_results.append(e2e.run_clip(engines, p, a, runs=args.runs, warmup=args.warmup,
                                                 dec_tokens=args.decoder_tokens, cold=not args.no_cold, model=args.model,
                                                 threads=threads, ref_tokens=ref_tokens, progress=bar))
        del ref_engine

    batch_results = []
    if args.batch and engines:
        from .batch import file_set, run_batch
        clip_audio = []
        for p in extra_clips:
            try:
                clip_audio.append((p.name, audio[p] if p in audio else load_audio(p)))
            except Exception as exc:
                ap.error(f"cannot read audio {p}: {exc}")
        files = file_set(clip_audio, args.batch)
        doc["batch"] = dict(size=args.batch, files=len(files), clips=[name for name, _ in clip_audio], warmup=args.warmup > 0)
        for e in engines:
            if not isinstance(e, BackendEngine):
                continue
            print(f"batch: {e.name}, {len(files)} files, one at a time then batch_size={args.batch} ...", file=sys.stderr)
            b = run_batch(e, files, args.batch, warmup=args.warmup > 0)
            batch_results.append(b)
            if b.error:
                print(f"  batch failed on {e.name}: {b.error}", file=sys.stderr)

    long_results = []
    if args.long and selected:
        import tempfile
        from .long import GAP_S, run_long, write_long
        backends = [e.name for e in engines if isinstance(e, BackendEngine)]
        with tempfile.TemporaryDirectory(prefix="whisperkit-bench-long-") as tmp:
            path = Path(tmp) / f"long_{args.long:g}min.wav"
            try:
                duration = write_long(path, args.long, [load_audio(p) for p in extra_clips])
            except Exception as exc:
                ap.error(f"cannot build the long file: {exc}")
            doc["long"] = dict(minutes=args.long, duration_s=duration, clips=[p.name for p in extra_clips], gap_s=GAP_S)
            for n in backends:
                print(f"long: {n}, {args.long:g} minutes in a fresh process ...", file=sys.stderr)
                r = run_long(n, path, duration, args.model, threads)
                long_results.append(r)
                if r.error:
                    print(f"  long file failed on {n}: {r.error}", file=sys.stderr)

    if do_ops:
        print("per-op: measuring the roofline ...", file=sys.stderr)
        roofline = opsmod.Roofline(quick=args.quick)
        roofline.sample()
        cases = opsmod.op_cases(weights.dims)
        dispatchers = {}
        for n in selected:
            try:
                dispatchers[n] = reg.ops(n)
            except Exception as exc:
                skipped.append(dict(engine=n, kind="backend", reason=f"ops: {type(exc).__name__}: {exc}"))
        op_results = {n: {} for n in dispatchers}
        min_time, min_reps, op_warmup = (0.02, 1, 1) if args.quick else (0.3, 5, 2)
        with tqdm(total=len(cases) * len(dispatchers), desc="per op", file=sys.stderr, unit="op", mininterval=0.5) as bar:
            for i, case in enumerate(cases):  # case-major: the backends take turns on each op
                for n, d in dispatchers.items():
                    bar.set_postfix_str(f"{n} {case.op}", refresh=False)
                    try:
                        res = opsmod.run_op(d, case, min_time=min_time, min_reps=min_reps, warmup=op_warmup)
                    except Exception as exc:
                        res = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
                    op_results[n][case.key] = (case, res)
                    bar.update(1)
                if i % 3 == 2:
                    roofline.sample()
        roofline.sample()
        roof = doc["roofline"] = roofline.as_dict()
        for n in op_results:  # ratios against the best roofline seen in the whole run
            for key, (case, res) in op_results[n].items():
                opsmod.add_roofline(res, case, roof)

    doc["records"] = (report.e2e_records(all_results) + report.batch_records(batch_results)
                      + report.long_records(long_results) + report.ops_records(op_results))
    for e in engines:
        if isinstance(e, BackendEngine) and e.fallbacks:
            doc.setdefault("fallbacks", {})[e.name] = e.fallbacks
    doc["engines"] = [dict(engine=e.name, kind=e.kind, version=e.version) for e in engines]

    print(report.render(doc, all_results, op_results, batch_results=batch_results, long_results=long_results))
    if args.json:
        args.json.write_text(json.dumps(_finite(doc), indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.markdown:
        args.markdown.write_text(report.markdown(doc, all_results, op_results, batch_results, long_results))
        print(f"wrote {args.markdown}", file=sys.stderr)
    if args.plot:
        from .png import bar_chart
        groups = []
        for clip_results in all_results:
            if clip_results:
                c = clip_results[0]
                groups.append((f"{c.clip} ({c.duration_s:.1f} s)",
                               [(r.engine, r.rtf, 0 if r.kind == "backend" else 1) for r in clip_results]))
        if not groups:
            groups = [("no end-to-end results (--ops)", [])]
        args.plot.write_bytes(bar_chart(groups, "Real-time factor, lower is faster",
                                        f"{weights.name}  {threads} threads  {doc['date']}  blue: whisperkit backends, orange: peers"))
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
