"""``whisperkit-bench``: race every backend (and the peers) end to end and op by op."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from whisperkit.contract import compute_type_name

from .engines import engine_name, split_engine
from .machine import default_audio, default_threads, find_shared_audio, read_bandwidth, thread_env

EPILOG = """examples:
  whisperkit-bench --backend all --native-blas --cli     # the figures of the README
  whisperkit-bench --backend all
  whisperkit-bench --backend numba,onnxruntime --audio my.flac --json out.json --markdown out.md --plot out.png
  whisperkit-bench --ops                 # per-op microbenchmarks only
  whisperkit-bench --backend numpy --quick --no-peers
  whisperkit-bench --backend numpy,onnxruntime --batch 4 --no-ops --no-peers --no-cold --runs 1
  whisperkit-bench --backend all --long 60 --batch 0 --no-ops   # a 60-minute file: wall time, RTF, peak RSS
Every engine runs in a worker process of its own; the per-op microbenchmarks and the roofline too.
Speed never makes the bench fail: it exits non-zero only on bad arguments."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="whisperkit-bench", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="all", help="'all' (every usable backend, default) or a comma-separated list; "
                    "'auto' stands for the backend auto picks here, which the report marks")
    ap.add_argument("--audio", action="append", type=Path, default=None,
                    help="audio file to transcribe (repeatable); default: jfk_16k.wav and osr_16k.wav of ../shared/audio")
    ap.add_argument("--model", default="tiny.en", help="model name or path (default tiny.en)")
    ap.add_argument("--runs", type=int, default=3, help="timed warm runs per engine and clip (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per engine and clip (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="threads for every engine (default: all usable cores)")
    ap.add_argument("--beam", default="1,5", help="decoding modes, comma-separated beam sizes: 1 is greedy, 5 is beam_size 5 "
                    "with best_of 5 (default 1,5)")
    ap.add_argument("--native-blas", action="store_true",
                    help="start the workers without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, as on a user's machine")
    ap.add_argument("--cli", action="store_true", help="also time the commands as a user types them, cold: "
                    "`whisperkit transcribe FILE` (default and each --backend), a faster-whisper script, openai-whisper's "
                    "`whisper`; a fresh process per run, median of --runs (default file: jfk.flac of ../shared/audio)")
    ap.add_argument("--ops", action="store_true", help="per-op microbenchmarks only")
    ap.add_argument("--no-ops", action="store_true", help="skip the per-op microbenchmarks")
    ap.add_argument("--no-peers", action="store_true", help="do not race faster-whisper / openai-whisper")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-start subprocesses (import, load, first run)")
    ap.add_argument("--quick", action="store_true", help="1 run, no warm-up, greedy only, short op timings (tests)")
    ap.add_argument("--batch", type=int, default=None, metavar="N",
                    help="batch throughput: the clips (jfk_16k, pv_en, osr_16k, pv_de or --audio) repeated to at least N "
                         "files, one at a time vs transcribe_batch(batch_size=N); default 4, off with --quick; 0 disables")
    ap.add_argument("--long", type=float, default=None, metavar="MINUTES",
                    help="also transcribe a MINUTES-long file (the clips whose text is known, jfk_16k, pv_en and "
                         "osr_16k, or --audio, with silence and noise between them) in a fresh process per engine and "
                         "mode: wall time, RTF, peak RSS, word error rate (default: off)")
    ap.add_argument("--long_batch", type=int, default=8, metavar="N",
                    help="with --long: also batched, transcribe(batch_size=N), and faster-whisper's "
                         "BatchedInferencePipeline(batch_size=N) when installed; 0: sequential only (default 8)")
    ap.add_argument("--compute_type", default="float32",
                    help="float32 (default) or int8 for every backend; 'NAME@int8' in --backend sets one backend's")
    ap.add_argument("--json", type=Path, help="write every figure as JSON here")
    ap.add_argument("--markdown", type=Path, help="write the results as markdown here (for the README)")
    ap.add_argument("--plot", type=Path, help="write a PNG bar chart of the real-time factor here")
    return ap


def run_long_file(args, selected: list[str], threads: int, env: dict, doc: dict, skipped: list) -> list:
    """--long: build the file, then one fresh process per engine and mode (see bench/long.py)."""
    import tempfile

    from whisperkit.audio import load_audio

    from .engines import peer_available
    from .long import FASTER_WHISPER, GAP_S, LABELLED, SR, reference_text, run_long, write_long
    shared = find_shared_audio()
    paths = ([Path(p).resolve() for p in args.audio] if args.audio else
             [shared / n for n in LABELLED if shared is not None and (shared / n).is_file()])
    if not paths:
        raise SystemExit("whisperkit-bench: error: no audio for --long: pass --audio FILE (the shared clips were not found)")
    runs = [(n, None) for n in selected] + ([(n, args.long_batch) for n in selected] if args.long_batch else [])
    why = peer_available(FASTER_WHISPER) if not args.no_peers else "--no-peers"
    if why is None:
        runs += [(FASTER_WHISPER, None)] + ([(FASTER_WHISPER, args.long_batch)] if args.long_batch else [])
    elif not args.no_peers:
        skipped.append(dict(engine=FASTER_WHISPER, kind="peer", reason=f"long file: {why}"))
    results = []
    with tempfile.TemporaryDirectory(prefix="whisperkit-bench-long-") as tmp:
        path = Path(tmp) / f"long_{args.long:g}min.wav"
        clips = [load_audio(p) for p in paths]
        duration = write_long(path, args.long, clips)
        reference = reference_text([p.name for p in paths], [len(c) for c in clips], int(round(args.long * 60 * SR)))
        doc["long"] = dict(minutes=args.long, duration_s=duration, clips=[p.name for p in paths], gap_s=GAP_S,
                           batch_size=args.long_batch or None, wer=reference is not None)
        for engine, batch in runs:
            mode = "sequential" if batch is None else f"batched {batch}"
            print(f"long: {engine} {mode}, {args.long:g} minutes in a fresh process ...", file=sys.stderr)
            r = run_long(engine, path, duration, args.model, threads, env=env, batch_size=batch, reference=reference)
            results.append(r)
            if r.error:
                print(f"  long file failed on {engine} {mode}: {r.error}", file=sys.stderr)
    return results


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def parse_beams(text: str) -> list[int]:
    try:
        beams = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--beam takes comma-separated beam sizes such as 1,5; got {text!r}") from None
    if not beams or any(b < 1 for b in beams):
        raise ValueError(f"--beam takes beam sizes >= 1 such as 1,5; got {text!r}")
    return list(dict.fromkeys(beams))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be >= 1, --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.ops and args.no_ops:
        ap.error("--ops and --no-ops contradict each other")
    if args.batch is not None and args.batch < 0:
        ap.error("--batch must be >= 0 (0 disables)")
    if args.long is not None and not (args.long > 0 and math.isfinite(args.long)):
        ap.error("--long must be a positive number of minutes")
    if args.ops and (args.batch or args.long or args.cli):
        ap.error("--ops runs the per-op microbenchmarks only: drop --batch / --long / --cli")
    try:
        beams = parse_beams(args.beam)
    except ValueError as exc:
        ap.error(str(exc))
    if args.batch is None:
        args.batch = 0 if (args.quick or args.ops) else 4
    if args.quick:
        args.runs, args.warmup = 1, 0
        if "--beam" not in " ".join(argv):
            beams = [1]
    threads = args.threads or default_threads()
    os.environ.update(thread_env(threads, {}))  # the parent's own numpy, and every child it starts

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
        clips = [Path(p).resolve() for p in clips]
    extra_clips: list[Path] = []
    if args.batch or args.long:
        from .batch import batch_clips
        extra_clips = [Path(p).resolve() for p in (args.audio or batch_clips())]
        if not extra_clips:
            ap.error("no audio for --batch / --long: pass --audio FILE (the shared clips were not found)")
    if args.long_batch < 0:
        ap.error(f"--long_batch must be 0 (off) or a batch size, got {args.long_batch}")
    cli_audio: Path | None = None
    if args.cli:
        shared = find_shared_audio()
        cli_audio = (args.audio[0] if args.audio else (shared / "jfk.flac" if shared else None))
        if cli_audio is None or not Path(cli_audio).is_file():
            ap.error("no audio for --cli: pass --audio FILE (jfk.flac of the shared clips was not found)")
        cli_audio = Path(cli_audio).resolve()
    for out in (args.json, args.markdown, args.plot):
        if out is not None and not out.resolve().parent.is_dir():
            ap.error(f"output folder does not exist: {out.resolve().parent}")

    # heavy imports only now; none of them loads a backend's kernels, torch or CTranslate2
    from tqdm import tqdm

    from whisperkit.audio import load_audio

    from . import e2e, report
    from .engines import PEERS, peer_available
    from .machine import machine_info, now_iso, versions
    from .worker import BLAS_ENV, Worker, WorkerError, worker_env

    env = worker_env(threads, args.native_blas)
    wopts = dict(model=args.model, threads=threads, native_blas=args.native_blas)
    machine = machine_info()
    try:
        with Worker("registry", **wopts) as w:
            listing = w.call("registry")
            model_info = w.call("model_info")
    except WorkerError as exc:
        ap.error(f"cannot load model {args.model!r}: {exc}")
    infos = {b["name"]: b for b in listing["backends"]}
    skipped: list[dict] = []
    if args.backend.strip().lower() == "all":
        wanted = sorted(infos)
    else:
        wanted = [listing["auto"] if n.strip() == "auto" else n.strip() for n in args.backend.split(",") if n.strip()]
    try:  # "name@int8" picks a compute type for one backend; --compute_type for every one without its own
        wanted = [engine_name(b, compute_type_name(c if "@" in n else args.compute_type))
                  for n in wanted for b, c in [split_engine(n)]]
    except ValueError as exc:
        ap.error(str(exc))
    wanted = list(dict.fromkeys(wanted))
    unknown = [n for n in wanted if split_engine(n)[0] not in infos]
    if unknown:
        ap.error(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(sorted(infos))}")
    for n in wanted:
        if not infos[split_engine(n)[0]]["usable"]:
            skipped.append(dict(engine=n, kind="backend", reason=infos[split_engine(n)[0]]["reason"]))
    selected = [n for n in wanted if infos[split_engine(n)[0]]["usable"]]
    # the reference first: its tokens are what the others are compared with
    selected.sort(key=lambda n: (n != e2e.REFERENCE, n))

    blas_set = {k: os.environ[k] for k in BLAS_ENV if os.environ.get(k)}
    doc = dict(schema=report.SCHEMA, date=now_iso(), command="whisperkit-bench " + " ".join(argv), machine=machine,
               versions=versions(), threads=threads, model=model_info["name"], runs=args.runs, warmup=args.warmup,
               quick=args.quick, reference=e2e.REFERENCE, beams=beams, native_blas=args.native_blas,
               blas=dict(workers=listing["blas"], env_set=blas_set, workers_env={k: env.get(k) for k in BLAS_ENV}),
               backends=listing["backends"], clips=[], skipped=skipped, roofline=None, records=[], pids={})
    doc["pids"]["parent"] = os.getpid()

    if blas_set:  # the cost of the forced kernel, measured: one roofline worker with it, one without
        doc["blas"]["forced"] = blas_cost(args, threads)
        f = doc["blas"]["forced"]
        print(f"whisperkit-bench: {', '.join(f'{k}={v}' for k, v in blas_set.items())} is set here: sgemm "
              f"{f['forced_gflops']:.0f} GFLOP/s ({f['forced_kernel']}) against {f['native_gflops']:.0f} "
              f"({f['native_kernel']}) without it; workers run "
              + ("without it (--native-blas)" if args.native_blas else "with it (pass --native-blas to run as on a user's machine)"),
              file=sys.stderr)

    all_results: list[list] = []
    batch_results = []
    if do_e2e:
        durations = {}
        for p in set(clips) | set(extra_clips):
            try:
                durations[p] = len(load_audio(p)) / 16000
            except Exception as exc:
                ap.error(f"cannot read audio {p}: {exc}")
        doc["clips"] = [dict(clip=p.name, path=str(p), duration_s=durations[p]) for p in clips]
        print(f"whisperkit-bench: {len(selected)} backend(s) {', '.join(selected) or '(none)'}, {len(clips)} clip(s), "
              f"{' and '.join(e2e.mode_label(b) for b in beams)}, {threads} thread(s), model {model_info['name']}, "
              f"one worker process per engine", file=sys.stderr)
        workers: dict = {}
        kinds: dict = {}
        engines_doc = []

        def start(spec: str, name: str, kind: str):
            try:
                w = Worker(spec, **wopts)
                info = w.call("load")
            except Exception as exc:
                if "w" in locals():
                    w.close()
                skipped.append(dict(engine=name, kind=kind, reason=f"load failed: {exc}"))
                return None
            engines_doc.append(dict(engine=name, kind=kind, version=info.get("version"), pid=w.pid,
                                    blas=info.get("blas"), fallbacks=info.get("fallbacks", [])))
            return w

        for n in selected:
            w = start(f"backend:{n}", n, "backend")
            if w is not None:
                workers[n], kinds[n] = w, "backend"
        if not args.no_peers:
            for name in PEERS:
                reason = peer_available(name)
                if reason is not None:
                    skipped.append(dict(engine=name, kind="peer", reason=reason))
                    continue
                w = start(f"peer:{name}", name, "peer")
                if w is not None:
                    workers[name], kinds[name] = w, "peer"
        for s in skipped:
            print(f"  skipped {s['engine']} ({s['kind']}): {s['reason']}", file=sys.stderr)
        ref_worker = None
        if e2e.REFERENCE not in workers and workers:
            ref_worker = Worker(f"backend:{e2e.REFERENCE}", **wopts)
            ref_worker.call("load")
        doc["pids"]["engines"] = {e["engine"]: e["pid"] for e in engines_doc}

        total = len(clips) * len(beams) * (e2e.steps_per_clip(len(workers), args.runs, args.warmup) + (1 if ref_worker else 0))
        try:
            with tqdm(total=total, desc="end to end", file=sys.stderr, unit="run", mininterval=0.5) as bar:
                for beam in beams:
                    for p in clips:
                        ref_tokens = None
                        if ref_worker is not None:
                            ref_tokens = ref_worker.call("transcribe", audio=str(p), beam=beam)["tokens"]
                            bar.update(1)
                        all_results.append(e2e.run_clip(workers, kinds, p, durations[p], beam, runs=args.runs,
                                                        warmup=args.warmup, ref_tokens=ref_tokens, progress=bar,
                                                        probe=lambda: read_bandwidth(threads=threads)))
            if args.batch:
                from .batch import BatchResult, file_set
                files = file_set([(p.name, p) for p in extra_clips], args.batch)
                doc["batch"] = dict(size=args.batch, files=len(files), clips=[p.name for p in extra_clips], warmup=args.warmup > 0)
                for n, w in workers.items():
                    if kinds[n] != "backend":
                        continue
                    print(f"batch: {n}, {len(files)} files, one at a time then batch_size={args.batch} ...", file=sys.stderr)
                    try:
                        r = w.call("batch", files=[str(p) for _, p in files], batch_size=args.batch, warmup=args.warmup > 0)["result"]
                        b = BatchResult(**{k: v for k, v in r.items()})
                    except Exception as exc:
                        b = BatchResult(n, args.batch, len(files), sum(durations[p] for _, p in files), error=str(exc))
                    batch_results.append(b)
                    if b.error:
                        print(f"  batch failed on {n}: {b.error}", file=sys.stderr)
        finally:
            for w in list(workers.values()) + ([ref_worker] if ref_worker else []):
                w.close()
        doc["engines"] = engines_doc
        for e in engines_doc:
            if e["fallbacks"]:
                doc.setdefault("fallbacks", {})[e["engine"]] = e["fallbacks"]

        if not args.no_cold:  # a fresh process per engine and clip: import, load, first transcription
            cold_total = len(clips) * len(workers)
            with tqdm(total=cold_total, desc="cold start", file=sys.stderr, unit="process", mininterval=0.5) as bar:
                for clip_results in all_results:
                    if clip_results[0].beam != beams[0]:
                        continue
                    p = next(c for c in clips if c.name == clip_results[0].clip)
                    for r in clip_results:
                        if r.error:
                            continue
                        try:
                            r.cold = e2e.cold_start(f"{r.kind}:{r.engine}", p, args.model, threads, env,
                                                    model_info["ct2_dir"] if r.kind == "peer" else None)
                        except Exception as exc:
                            r.cold = {"error": f"{type(exc).__name__}: {exc}"}
                        bar.update(1)

    cli_results = []
    if args.cli:
        import tempfile
        from . import command
        with tempfile.TemporaryDirectory(prefix="whisperkit-bench-ckpt-") as tmp:
            ckpt = None
            if not args.no_peers and peer_available("openai-whisper") is None:
                ckpt, why = command.openai_checkpoint(args.model, Path(tmp), env)
                if why:
                    skipped.append(dict(engine="openai-whisper command", kind="cli", reason=f"checkpoint: {why}"))
            cmds, cli_skipped = command.build_commands(cli_audio, model=args.model, backends=selected, threads=threads,
                                                      ct2_dir=Path(model_info["ct2_dir"]) if model_info["ct2_dir"] else None,
                                                      openai_checkpoint=ckpt, peers=not args.no_peers)
            skipped.extend(cli_skipped)
            doc["cli"] = dict(audio=str(cli_audio), runs=args.runs)
            with tqdm(total=len(cmds) * args.runs, desc="cli, cold", file=sys.stderr, unit="process", mininterval=0.5) as bar:
                cli_results = command.race(cmds, env, args.runs, progress=bar)

    long_results = []
    if args.long and selected:
        long_results = run_long_file(args, selected, threads, env, doc, skipped)

    op_results: dict = {}
    if do_ops:
        op_results = run_ops(args, selected, wopts, doc, skipped)

    doc["records"] = (report.e2e_records(all_results) + report.batch_records(batch_results)
                      + report.long_records(long_results) + report.cli_records(cli_results) + report.ops_records(op_results))
    print(report.render(doc, all_results, op_results, batch_results=batch_results, long_results=long_results,
                        cli_results=cli_results))
    if args.json:
        args.json.write_text(json.dumps(_finite(doc), indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.markdown:
        args.markdown.write_text(report.markdown(doc, all_results, op_results, batch_results, long_results, cli_results))
        print(f"wrote {args.markdown}", file=sys.stderr)
    if args.plot:
        from .png import bar_chart
        groups = []
        for clip_results in all_results:
            if clip_results:
                c = clip_results[0]
                groups.append((f"{c.clip} {c.mode} ({c.duration_s:.1f} s)",
                               [(r.engine, r.rtf, 0 if r.kind == "backend" else 1) for r in clip_results]))
        if not groups:
            groups = [("no end-to-end results (--ops)", [])]
        args.plot.write_bytes(bar_chart(groups, "Real-time factor, lower is faster",
                                        f"{model_info['name']}  {threads} threads  {doc['date']}  blue: whisperkit backends, orange: peers"))
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def blas_cost(args, threads: int) -> dict:
    """sgemm with the machine's forced BLAS kernel and without it, each in a roofline worker of its own,
    sampled alternately."""
    from .worker import Worker
    out = {}
    ws = {}
    try:
        for label, native in (("forced", False), ("native", True)):
            ws[label] = Worker("roofline", model=args.model, threads=threads, native_blas=native)
        for _ in range(1 if args.quick else 3):
            for label, w in ws.items():
                r = w.call("roofline", quick=args.quick)
                out[f"{label}_gflops"] = r["roofline"]["sgemm_gflops"]
                out[f"{label}_kernel"] = ",".join(str(b.get("architecture")) for b in r["blas"]) or "?"
    finally:
        for w in ws.values():
            w.close()
    out["cost"] = out["native_gflops"] / out["forced_gflops"] if out.get("forced_gflops") else None
    return out


def run_ops(args, selected: list[str], wopts: dict, doc: dict, skipped: list[dict]) -> dict:
    """Per-op microbenchmarks: one worker per backend and one for the roofline, case-major so the
    backends take turns on each op, the roofline sampled between the cases."""
    from tqdm import tqdm

    from . import ops as opsmod
    from .worker import Worker
    print("per-op: measuring the roofline ...", file=sys.stderr)
    workers = {}
    cases = None
    roof_worker = Worker("roofline", **wopts)
    try:
        roof = roof_worker.call("roofline", quick=args.quick)
        doc["pids"]["roofline"] = roof["pid"]
        doc["blas"]["roofline_worker"] = roof["blas"]
        for n in dict.fromkeys(split_engine(n)[0] for n in selected):  # the per-op figures are float32's
            try:
                w = Worker(f"ops:{n}", **wopts)
                c = w.call("op_cases")
            except Exception as exc:
                skipped.append(dict(engine=n, kind="backend", reason=f"ops: {exc}"))
                continue
            workers[n] = w
            cases = cases or [opsmod.CaseInfo(**x) for x in c["cases"]]
            doc["pids"].setdefault("ops", {})[n] = w.pid
        op_results = {n: {} for n in workers}
        min_time, min_reps, op_warmup = (0.02, 1, 1) if args.quick else (0.3, 5, 2)
        with tqdm(total=len(cases or []) * len(workers), desc="per op", file=sys.stderr, unit="op", mininterval=0.5) as bar:
            for i, case in enumerate(cases or []):
                for n, w in workers.items():
                    bar.set_postfix_str(f"{n} {case.op}", refresh=False)
                    try:
                        res = w.call("op", index=i, min_time=min_time, min_reps=min_reps, warmup=op_warmup)["result"]
                    except Exception as exc:
                        res = {"status": "error", "error": str(exc)}
                    op_results[n][case.key] = (case, res)
                    bar.update(1)
                if i % 3 == 2:
                    roof = roof_worker.call("roofline", quick=args.quick)
        roof = roof_worker.call("roofline", quick=args.quick)
    finally:
        for w in list(workers.values()) + [roof_worker]:
            w.close()
    r = doc["roofline"] = roof["roofline"]
    for n in op_results:  # ratios against the best roofline seen in the whole run
        for key, (case, res) in op_results[n].items():
            opsmod.add_roofline(res, case, r)
    return op_results


if __name__ == "__main__":
    sys.exit(main())
