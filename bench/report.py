"""Output: the terminal tables, the JSON document (one record per engine x clip x figure), markdown."""
from __future__ import annotations

import math

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
    """(engine, peer) -> peer's warm min / engine's warm min, for every backend on this clip."""
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
        for r in clip_results:
            for figure, (value, unit) in r.figures().items():
                records.append(dict(section="e2e", engine=r.engine, kind=r.kind, clip=r.clip, figure=figure, value=value, unit=unit))
            if r.error:
                records.append(dict(section="e2e", engine=r.engine, kind=r.kind, clip=r.clip, figure="error", value=r.error, unit="text"))
            if r.cold and "error" in r.cold:
                records.append(dict(section="e2e", engine=r.engine, kind=r.kind, clip=r.clip, figure="cold_error", value=r.cold["error"], unit="text"))
        for (engine, peer), ratio in speedups(clip_results).items():
            records.append(dict(section="e2e", engine=engine, kind="backend", clip=clip_results[0].clip,
                                figure=f"speedup_vs_{peer}", value=ratio, unit="peer time / engine time"))
    return records


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
        base = dict(section="long", engine=r.engine, kind="backend", clip=clip)
        for figure, (value, unit) in r.figures().items():
            records.append(dict(base, figure=figure, value=value, unit=unit))
        if r.error:
            records.append(dict(base, figure="error", value=r.error, unit="text"))
    return records


# ------------------------------------------------------------------------------------------ tables
E2E_HEADERS = ["engine", "warm min (s)", "warm median (s)", "RTF", "cold start (s)", "peak RSS (MB)",
               "encoder / window (ms)", "decoder / token (ms)", "tokens = numpy"]


def e2e_rows(clip_results, peers_present: list[str]) -> tuple[list[str], list[list[str]]]:
    headers = E2E_HEADERS + [f"× {PEER_SHORT[p]}" for p in peers_present]
    sp = speedups(clip_results)
    rows = []
    for r in clip_results:
        cold = r.cold or {}
        name = r.engine if r.kind == "backend" else f"{r.engine} (peer)"
        if r.error:
            rows.append([name, f"failed: {r.error}"[:90]] + [""] * (len(headers) - 2))
            continue
        row = [name, _f(r.warm_min_s), _f(r.warm_median_s), _f(r.rtf, "{:.3f}"),
               _f(cold.get("outside_s")) if "error" not in cold else "failed",
               _f(cold.get("peak_rss_mb"), "{:.0f}"), _f(r.encoder_ms_per_window, "{:.0f}"),
               _f(r.decoder_ms_per_token, "{:.1f}"), _f(r.tokens_equal_ref)]
        row += [_f(sp.get((r.engine, p)), "{:.2f}×") for p in peers_present]
        rows.append(row)
    return headers, rows


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


LONG_HEADERS = ["engine", "audio (min)", "wall (s)", "RTF", "load (s)", "process (s)", "peak RSS (MB)", "segments", "tokens"]


def long_rows(long_results) -> tuple[list[str], list[list[str]]]:
    rows = []
    for r in long_results:
        if r.error:
            rows.append([r.engine, f"{r.duration_s / 60:.1f}", f"failed: {r.error}"[:90]] + [""] * (len(LONG_HEADERS) - 3))
            continue
        rows.append([r.engine, f"{r.duration_s / 60:.1f}", _f(r.transcribe_s, "{:.1f}"), _f(r.rtf, "{:.3f}"), _f(r.load_s),
                     _f(r.outside_s, "{:.1f}"), _f(r.peak_rss_mb, "{:.0f}"), _f(r.n_segments, "{}"), _f(r.n_tokens, "{}")])
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
def render(doc: dict, all_results, op_results, table=text_table, heading=lambda lvl, s: s,
           batch_results=(), long_results=()) -> str:
    parts = []
    peers_present = [p for p in PEER_SHORT if any(r.engine == p for cr in all_results for r in cr)]
    for clip_results in all_results:
        if not clip_results:
            continue
        c = clip_results[0]
        parts.append(heading(3, f"End to end: {c.clip} ({c.duration_s:.1f} s of audio)"))
        parts.append(table(*e2e_rows(clip_results, peers_present)))
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
                     f"with {lg.get('gap_s')} s of digital silence or noise between them, transcribed with the default "
                     "options (temperature fallback, conditioning on previous text) from the file in a fresh process per "
                     "backend.  Wall: the transcription alone; RTF: wall / duration; process: the whole process timed from "
                     "outside; peak RSS: VmHWM of that process (model load included).")
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


def markdown(doc: dict, all_results, op_results, batch_results=(), long_results=()) -> str:
    m = doc["machine"]
    v = doc["versions"]
    peers = "; ".join(f"{e['engine']} {e['version']}" for e in doc.get("engines", []) if e["kind"] == "peer")
    head = [
        "## Benchmark results",
        "",
        f"Measured {doc['date']} with `{doc['command']}` on {m['cpu']} ({m['usable_cores']} usable cores, "
        f"{m['memory_gb']} GB, {m['platform']}), Python {m['python']}, NumPy {v.get('numpy')} ({m['numpy_blas']}), "
        f"{doc['threads']} threads for every engine (BLAS: {doc['thread_control']}); model {doc['model']}, greedy, temperature 0; "
        f"{doc['runs']} warm runs after {doc['warmup']} warm-up, interleaved across engines."
        + (f" Peers: {peers}." if peers else ""),
        "",
        f"**The machine was shared with other engineers' builds and tests during this run (load average "
        f"{m.get('loadavg_at_start')} at start, on {m['usable_cores']} cores): absolute times are noisy. "
        "Compare ratios within one table; they come from interleaved runs.**",
        "",
        "RTF: warm min time / audio duration (below 1 is faster than real time).  Cold start: a fresh process "
        "importing, loading and transcribing once, timed from outside; peak RSS is that process's.  Encoder: one "
        "30 s window; decoder: one token step with the KV cache, teacher-forced on the transcript.  "
        "`× peer`: the peer's warm min time / this backend's (above 1: faster than the peer).  "
        "Peers run on the same tiny.en weights (faster-whisper on the CTranslate2 directory, openai-whisper on a "
        "state dict built from our tensors).",
        "",
        "",
    ]
    return "\n".join(head) + render(doc, all_results, op_results, md_table, lambda lvl, s: "#" * lvl + " " + s,
                                     batch_results, long_results) + "\n"
