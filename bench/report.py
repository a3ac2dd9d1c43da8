"""Output: the terminal tables, the JSON document (one record per engine x clip x figure), markdown."""
from __future__ import annotations

import math
from pathlib import Path

PEER_SHORT = {"faster-whisper-fp32": "fw fp32", "faster-whisper-int8": "fw int8", "openai-whisper": "openai"}
SCHEMA = "whisperkit-bench/1"


def _f(v, fmt="{:.2f}", none="—"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    if isinstance(v, bool):
        return "yes" if v else "NO"
    return fmt.format(v)


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.0f} ms" if ms >= 100 else f"{ms:.3g} ms"


# ------------------------------------------------------------------------------------------ records
def speedups(clip_results) -> dict[tuple[str, str], float]:
    """(engine, peer) -> peer's warm min / engine's warm min, for every backend on this clip and mode.
    The one definition of a ratio in the bench: peer time / our time, above 1 means we are faster."""
    by_name = {r.engine: r for r in clip_results}
    out = {}
    for r in clip_results:
        if r.kind != "backend" or r.warm_min_s is None:
            continue
        for peer in PEER_SHORT:
            p = by_name.get(peer)
            if p is not None and p.warm_min_s is not None:
                out[(r.engine, peer)] = p.warm_min_s / r.warm_min_s
    return out


def e2e_records(all_results) -> list[dict]:
    records = []
    for clip_results in all_results:
        if not clip_results:
            continue
        c0 = clip_results[0]
        for r in clip_results:
            base = dict(section="e2e", engine=r.engine, kind=r.kind, clip=r.clip, mode=r.mode, beam=r.beam)
            for figure, (value, unit) in r.figures().items():
                records.append(dict(base, figure=figure, value=value, unit=unit))
            if r.error:
                records.append(dict(base, figure="error", value=r.error, unit="text"))
            if r.cold and "error" in r.cold:
                records.append(dict(base, figure="cold_error", value=r.cold["error"], unit="text"))
        for (engine, peer), ratio in speedups(clip_results).items():
            records.append(dict(section="e2e", engine=engine, kind="backend", clip=c0.clip, mode=c0.mode, beam=c0.beam,
                                figure=f"speedup_vs_{peer}", value=ratio, unit="peer time / engine time"))
    return records


def cli_records(cli_results) -> list[dict]:
    records = []
    fw = _fw_script(cli_results)
    for c in cli_results:
        base = dict(section="cli", engine=c.label, kind=c.kind, clip="cli")
        for figure, (value, unit) in c.figures().items():
            records.append(dict(base, figure=figure, value=value, unit=unit))
        if fw is not None and c is not fw and c.wall_median_s and fw.wall_median_s:
            records.append(dict(base, figure="speedup_vs_faster-whisper-script", value=fw.wall_median_s / c.wall_median_s,
                                unit="peer time / engine time"))
        if c.error:
            records.append(dict(base, figure="error", value=c.error, unit="text"))
    return records


def _fw_script(cli_results):
    return next((c for c in cli_results if c.label.startswith("faster-whisper")), None)


def ops_records(op_results: dict) -> list[dict]:
    """op_results: {backend: {case key: (case, result dict)}}."""
    records = []
    units = {"min_s": "s", "median_s": "s", "gflops": "GFLOP/s", "roofline_ratio": "roofline time / time", "reps": "count"}
    for backend, cases in op_results.items():
        for key, (case, res) in cases.items():
            base = dict(section="ops", engine=backend, kind="backend", op=case.op, shape=case.label)
            records.append(dict(base, figure="status", value=res.get("status"), unit="text"))
            for fig, unit in units.items():
                if fig in res:
                    records.append(dict(base, figure=fig, value=res[fig], unit=unit))
            if "error" in res:
                records.append(dict(base, figure="error", value=res["error"], unit="text"))
    return records


def batch_records(batch_results) -> list[dict]:
    records = []
    for b in batch_results:
        base = dict(section="batch", engine=b.engine, kind="backend", clip=f"{b.n_files} files")
        for figure, (value, unit) in b.figures().items():
            records.append(dict(base, figure=figure, value=value, unit=unit))
        if b.error:
            records.append(dict(base, figure="error", value=b.error, unit="text"))
    return records


def long_records(long_results, clip: str = "long") -> list[dict]:
    records = []
    for r in long_results:
        base = dict(section="long", engine=r.engine, kind="peer" if r.engine in PEER_SHORT else "backend", clip=clip,
                    mode=r.mode)
        for figure, (value, unit) in r.figures().items():
            records.append(dict(base, figure=figure, value=value, unit=unit))
        if r.error:
            records.append(dict(base, figure="error", value=r.error, unit="text"))
    return records


# ------------------------------------------------------------------------------------------ tables
E2E_HEADERS = ["engine", "warm min (s)", "warm median (s)", "RTF", "encoder / window (ms)", "encoder share",
               "decoder / token (ms)", "rows / step", "decoder share", "tokens = numpy"]


def _pct(v):
    return _f(None if v is None else 100 * v, "{:.0f}%")


def e2e_rows(clip_results, peers_present: list[str]) -> tuple[list[str], list[list[str]]]:
    headers = E2E_HEADERS + [f"× {PEER_SHORT[p]}" for p in peers_present]
    sp = speedups(clip_results)
    rows = []
    for r in clip_results:
        p = r.profile or {}
        name = r.engine if r.kind == "backend" else f"{r.engine} (peer)"
        if r.error:
            rows.append([name, f"failed: {r.error}"[:90]] + [""] * (len(headers) - 2))
            continue
        row = [name, _f(r.warm_min_s, "{:.3f}"), _f(r.warm_median_s, "{:.3f}"), _f(r.rtf, "{:.3f}"),
               _f(p.get("encoder_ms_per_window"), "{:.0f}"), _pct(p.get("encoder_share")),
               _f(p.get("decoder_ms_per_step"), "{:.2f}"), _f(p.get("decoder_rows_per_step"), "{:.1f}"),
               _pct(p.get("decoder_share")), _f(r.tokens_equal_ref)]
        row += [_f(sp.get((r.engine, q)), "{:.2f}×") for q in peers_present]
        rows.append(row)
    return headers, rows


COLD_HEADERS = ["engine", "clip", "process (s)", "import (s)", "load (s)", "first transcription (s)", "peak RSS (MB)"]


def cold_rows(all_results) -> tuple[list[str], list[list[str]]]:
    rows = []
    for clip_results in all_results:
        for r in clip_results:
            if not r.cold:
                continue
            c = r.cold
            if "error" in c:
                rows.append([r.engine, r.clip, f"failed: {c['error']}"[:90], "", "", "", ""])
                continue
            rows.append([r.engine, r.clip, _f(c.get("outside_s")), _f(c.get("import_s")), _f(c.get("load_s")),
                         _f(c.get("first_s")), _f(c.get("peak_rss_mb"), "{:.0f}")])
    return COLD_HEADERS, rows


def _columns(all_results) -> list[tuple[str, str]]:
    return [(cr[0].clip, cr[0].mode) for cr in all_results if cr]


def summary_rows(all_results, ratio_to: str | None = None) -> tuple[list[str], list[list[str]]]:
    """Engines x (clip, mode): warm min seconds, or with `ratio_to` the ratio `ratio_to`'s time / this engine's."""
    cols = _columns(all_results)
    engines: list[tuple[str, str]] = []
    cell: dict = {}
    for cr in all_results:
        for r in cr:
            if (r.engine, r.kind) not in engines:
                engines.append((r.engine, r.kind))
            cell[(r.engine, r.clip, r.mode)] = r.warm_min_s
    rows = []
    for engine, kind in engines:
        if ratio_to is not None and kind != "backend":
            continue
        row = [engine if kind == "backend" else f"{engine} (peer)"]
        for clip, mode in cols:
            v = cell.get((engine, clip, mode))
            if ratio_to is None:
                row.append(_f(v, "{:.3f}"))
            else:
                ref = cell.get((ratio_to, clip, mode))
                row.append(_f(ref / v if ref and v else None, "{:.2f}×"))
        rows.append(row)
    return ["engine"] + [f"{Path(clip).stem} {mode}" for clip, mode in cols], rows


CLI_HEADERS = ["command", "wall median (s)", "wall min (s)", "peak RSS median (MiB)", "runs", "× fw script"]


def cli_rows(cli_results) -> tuple[list[str], list[list[str]]]:
    fw = _fw_script(cli_results)
    rows = []
    for c in cli_results:
        if c.error:
            rows.append([c.label, f"failed: {c.error}"[:90], "", "", "", ""])
            continue
        ratio = fw.wall_median_s / c.wall_median_s if fw is not None and fw.wall_median_s and c.wall_median_s else None
        rows.append([c.label, _f(c.wall_median_s, "{:.3f}"), _f(min(c.wall_s) if c.wall_s else None, "{:.3f}"),
                     _f(c.rss_median_mb, "{:.0f}"), str(len(c.wall_s)), _f(ratio, "{:.2f}×")])
    return CLI_HEADERS, rows


BATCH_HEADERS = ["engine", "batch", "files", "audio (s)", "one at a time (s)", "batched (s)",
                 "one at a time (× realtime)", "batched (× realtime)", "speedup", "tokens equal"]


def batch_rows(batch_results) -> tuple[list[str], list[list[str]]]:
    rows = []
    for b in batch_results:
        if b.error:
            rows.append([b.engine, str(b.batch_size), str(b.n_files), f"{b.audio_s:.1f}", f"failed: {b.error}"[:90]]
                        + [""] * (len(BATCH_HEADERS) - 5))
            continue
        rows.append([b.engine, str(b.batch_size), str(b.n_files), f"{b.audio_s:.1f}", _f(b.sequential_s), _f(b.batched_s),
                     _f(b.throughput_sequential, "{:.1f}"), _f(b.throughput_batched, "{:.1f}"),
                     _f(b.speedup, "{:.2f}×"), _f(b.tokens_equal)])
    return BATCH_HEADERS, rows


LONG_HEADERS = ["engine", "mode", "audio (min)", "wall (s)", "RTF", "load (s)", "process (s)", "peak RSS (MB)", "segments",
                "tokens", "WER (%)"]


def long_rows(long_results) -> tuple[list[str], list[list[str]]]:
    rows = []
    for r in long_results:
        if r.error:
            rows.append([r.engine, r.mode, f"{r.duration_s / 60:.1f}", f"failed: {r.error}"[:90]] + [""] * (len(LONG_HEADERS) - 4))
            continue
        rows.append([r.engine, r.mode, f"{r.duration_s / 60:.1f}", _f(r.transcribe_s, "{:.1f}"), _f(r.rtf, "{:.4f}"),
                     _f(r.load_s), _f(r.outside_s, "{:.1f}"), _f(r.peak_rss_mb, "{:.0f}"), _f(r.n_segments, "{}"),
                     _f(r.n_tokens, "{}"), _f(r.wer, "{:.2f}")])
    return LONG_HEADERS, rows


def ops_table(op_results: dict) -> tuple[list[str], list[list[str]]]:
    backends = list(op_results)
    keys: list[str] = []
    cases = {}
    for b in backends:
        for key, (case, _res) in op_results[b].items():
            if key not in cases:
                keys.append(key)
                cases[key] = case
    headers = ["op", "shape"] + backends
    rows = []
    for key in keys:
        case = cases[key]
        row = [case.op, case.label]
        for b in backends:
            res = op_results[b].get(key, (None, {}))[1]
            if res.get("status") == "native":
                row.append(f"{_ms(res['min_s'])}, {res['gflops']:.3g} GF/s, {100 * res['roofline_ratio']:.0f}%")
            elif res.get("status") == "error":
                row.append("error")
            else:
                row.append(res.get("status", "—"))
        rows.append(row)
    return headers, rows


def text_table(headers, rows) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    line = "  ".join("{:<%d}" % w for w in widths)
    out = [line.format(*headers), line.format(*["-" * w for w in widths])]
    out += [line.format(*row) for row in rows]
    return "\n".join(out)


def md_table(headers, rows) -> str:
    def esc(s):
        return str(s).replace("|", "\\|")
    out = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ documents
def blas_line(doc: dict) -> str:
    """The BLAS facts of the run: library, kernel and threads the workers reported (threadpoolctl), and the
    forced-kernel variables with their measured cost when they are set here."""
    b = doc.get("blas") or {}
    libs = b.get("roofline_worker") or b.get("workers") or []
    if not libs:
        for e in doc.get("engines", []):
            if e.get("blas"):
                libs = e["blas"]
                break
    parts = []
    for lib in libs:
        if "error" in lib:
            parts.append(lib["error"])
        else:
            parts.append(f"{lib.get('internal_api', '?')} {lib.get('version', '')} kernel {lib.get('architecture', '?')}, "
                         f"{lib.get('num_threads', '?')} threads")
    text = "BLAS in the workers: " + ("; ".join(parts) if parts else "unknown") + "."
    env_set = b.get("env_set") or {}
    if env_set:
        f = b.get("forced") or {}
        text += (f" This machine sets {', '.join(f'{k}={v}' for k, v in env_set.items())}: "
                 + ("the workers ran without them (--native-blas), as on a user's machine." if doc.get("native_blas")
                    else "the workers ran WITH them (not as on a user's machine; pass --native-blas)."))
        if f.get("forced_gflops"):
            text += (f" Measured cost: sgemm {f['forced_gflops']:.0f} GFLOP/s with them (kernel {f.get('forced_kernel')}) "
                     f"against {f['native_gflops']:.0f} without (kernel {f.get('native_kernel')}), {f['cost']:.2f}×.")
    elif doc.get("native_blas"):
        text += " --native-blas: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE were not set here anyway."
    return text


def render(doc: dict, all_results, op_results, table=text_table, heading=lambda lvl, s: s,
           batch_results=(), long_results=(), cli_results=()) -> str:
    parts = [blas_line(doc)]
    peers_present = [p for p in PEER_SHORT if any(r.engine == p for cr in all_results for r in cr)]
    if all_results:
        parts.append(heading(3, "Warm transcribe(), seconds (min of the timed runs)"))
        parts.append(table(*summary_rows(all_results)))
        if "faster-whisper-fp32" in peers_present:
            parts.append(heading(3, "× faster-whisper fp32 (its time / ours; above 1: faster)"))
            parts.append(table(*summary_rows(all_results, ratio_to="faster-whisper-fp32")))
    for clip_results in all_results:
        if not clip_results:
            continue
        c = clip_results[0]
        parts.append(heading(3, f"End to end: {c.clip} ({c.duration_s:.1f} s of audio), {c.mode}"))
        if c.host_gbps:
            parts.append("Host read bandwidth before each timed round: "
                         + ", ".join(f"{g:.1f}" for g in c.host_gbps) + " GB/s (`bench.machine.read_bandwidth`; the "
                         "machine is shared, and the memory-bound figures move with it).")
        parts.append(table(*e2e_rows(clip_results, peers_present)))
    if any(r.cold for cr in all_results for r in cr):
        parts.append(heading(3, "Cold start (fresh process, greedy)"))
        parts.append(table(*cold_rows(all_results)))
    if cli_results:
        cd = doc.get("cli") or {}
        parts.append(heading(3, "The command, cold"))
        parts.append(f"Each run a fresh process on {Path(cd.get('audio', '?')).name}, timed from outside; peak RSS from "
                     f"wait4 (the child's ru_maxrss); median of {cd.get('runs')} runs, interleaved.  × fw script: the "
                     "faster-whisper script's median / this command's.")
        parts.append(table(*cli_rows(cli_results)))
    if batch_results:
        parts.append(heading(3, "Batch throughput"))
        bd = doc.get("batch") or {}
        parts.append("The batch clips (" + ", ".join(bd.get("clips", [])) + ") repeated into a set of files, "
                     "transcribed one at a time (`transcribe` in a loop) and with `transcribe_batch(batch_size=N)`, "
                     "greedy at temperature 0, one timed run each"
                     + (" after a batched warm-up" if bd.get("warmup") else " (no warm-up)") + ".  × realtime: audio hours per "
                     "wall-clock hour.  Speedup: one-at-a-time time / batched time.  Tokens equal: every file's "
                     "batched tokens are its one-at-a-time tokens.")
        parts.append(table(*batch_rows(batch_results)))
    if long_results:
        lg = doc.get("long") or {}
        parts.append(heading(3, "Long file"))
        parts.append(f"A {lg.get('minutes')}-minute WAV built from the shared clips ({', '.join(lg.get('clips', []))}) "
                     f"with {lg.get('gap_s')} s of digital silence or noise between them, transcribed from the file in a "
                     "fresh process per engine and mode, greedy with temperature fallback.  Sequential: `transcribe()`'s "
                     "defaults (conditioning on previous text); faster-whisper with beam_size=1.  Batched: "
                     "`transcribe(batch_size=N)` and faster-whisper's `BatchedInferencePipeline(batch_size=N)`, each "
                     "with its default VAD (Silero; pauses of 160 ms split speech into chunks of at most 30 s).  "
                     "Wall: the transcription alone; RTF: wall / duration; process: the whole process timed from "
                     "outside; peak RSS: VmHWM of that process (model load included).  WER: word error rate against the "
                     "clips' known text (jiwer; lower case, punctuation removed, 'mr' read as 'mister').")
        parts.append(table(*long_rows(long_results)))
    if op_results:
        roof = doc.get("roofline") or {}
        parts.append(heading(3, "Per op"))
        parts.append(f"Roofline measured in this run: NumPy sgemm {roof.get('sgemm_gflops', float('nan')):.1f} GFLOP/s "
                     f"({roof.get('sgemm_n')}³), copy bandwidth {roof.get('copy_gbs', float('nan')):.1f} GB/s "
                     f"({roof.get('copy_mib')} MiB arrays), each the best of {roof.get('samples')} samples taken between the op cases.  "
                     "Cell: best time, GFLOP/s, % of the roofline (roofline time / time).  Above 100%: a memory-bound op "
                     "whose working set fits in cache (DRAM bandwidth does not bind it), or a kernel faster than NumPy's sgemm.")
        parts.append(table(*ops_table(op_results)))
    if doc.get("skipped"):
        parts.append(heading(3, "Skipped"))
        parts.append("\n".join(f"- {s['engine']} ({s['kind']}): {s['reason']}" for s in doc["skipped"]))
    return "\n\n".join(parts)


def markdown(doc: dict, all_results, op_results, batch_results=(), long_results=(), cli_results=()) -> str:
    m = doc["machine"]
    v = doc["versions"]
    peers = "; ".join(f"{e['engine']} {e['version']}" for e in doc.get("engines", []) if e["kind"] == "peer")
    modes = ", ".join("greedy" if b == 1 else f"beam {b} (best_of 5)" for b in doc.get("beams", [1]))
    head = [
        "## Benchmark results",
        "",
        f"Measured {doc['date']} with `{doc['command']}` on {m['cpu']} ({m['usable_cores']} usable cores, "
        f"{m['memory_gb']} GB, {m['platform']}), Python {m['python']}, NumPy {v.get('numpy')} ({m['numpy_blas']}), "
        f"{doc['threads']} threads for every engine; model {doc['model']}; transcribe() with its defaults "
        f"(temperature fallback, timestamps), {modes}; {doc['runs']} timed runs after {doc['warmup']} warm-up, "
        "interleaved round-robin across engines; every engine in a worker process of its own."
        + (f" Peers: {peers}." if peers else "")
        + "".join(f" `backend=\"auto\"` picks {b['name']} on this machine." for b in doc.get("backends", []) if b.get("auto")),
        "",
        f"Load average {m.get('loadavg_at_start')} at the start, on {m['usable_cores']} cores: the machine is shared, so "
        "absolute times are noisy. Compare ratios within one table; they come from interleaved runs.",
        "",
        "RTF: warm min time / audio duration.  Encoder / window, decoder / token, rows / step and the shares are measured "
        "inside the fastest timed run (the graph's encoder and decoder timed as the decode loop calls them; a step is one "
        "decoder call of one new token per row, logits included; decoder / token is the steps' time, with a speculative "
        "greedy round's verification and the drafts it did not keep, over the tokens they decoded).  `× peer`: the peer's warm min time / this backend's "
        "(above 1: faster than the peer).  Peers run on the same weights (faster-whisper on the CTranslate2 directory, "
        "openai-whisper on a state dict built from our tensors).",
        "",
        "",
    ]
    return "\n".join(head) + render(doc, all_results, op_results, md_table, lambda lvl, s: "#" * lvl + " " + s,
                                     batch_results, long_results, cli_results) + "\n"
