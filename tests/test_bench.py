"""whisperkit-bench runs and writes well-formed outputs.  Speed is never asserted: the machine is shared."""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from helpers import shared

E2E_FIGURES = {"warm_min_s", "warm_median_s", "rtf", "cold_outside_s", "cold_inside_s", "peak_rss_mb",
               "encoder_ms_per_window", "encoder_share", "decoder_ms_per_step", "decoder_rows_per_step", "decoder_share",
               "decoder_steps", "encoder_windows", "tokens_equal_ref"}
BENCH = [sys.executable, "-c", "import sys; from whisperkit.bench.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One short run of the console script: numpy and onnxruntime, jfk, 1 warm run, cold start, per-op, every
    output; with this project's forced BLAS kernel in the environment and --native-blas to drop it."""
    out = tmp_path_factory.mktemp("bench")
    jfk = shared("audio", "jfk_16k.wav")
    cmd = BENCH + ["--backend", "numpy,onnxruntime", "--quick", "--no-peers", "--native-blas", "--audio", str(jfk),
                   "--json", str(out / "b.json"), "--markdown", str(out / "b.md"), "--plot", str(out / "b.png")]
    # This project's machines force the kernel; set it here too, so the test means the same everywhere.
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell", OPENBLAS_L2_SIZE="512")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_json_has_every_figure(quick_run):
    out, _ = quick_run
    doc = json.loads((out / "b.json").read_text())
    for key in ("schema", "date", "command", "machine", "versions", "threads", "model", "records", "roofline", "skipped"):
        assert key in doc, key
    assert doc["machine"]["cores"] >= 1 and doc["versions"]["numpy"]
    e2e = [r for r in doc["records"] if r["section"] == "e2e"]
    for r in e2e:
        assert set(r) >= {"engine", "kind", "clip", "figure", "value", "unit"}
    for engine in ("numpy", "onnxruntime"):
        figures = {r["figure"]: r["value"] for r in e2e if r["engine"] == engine and r["clip"] == "jfk_16k.wav"}
        assert E2E_FIGURES <= set(figures), E2E_FIGURES - set(figures)
        for f in E2E_FIGURES - {"tokens_equal_ref"}:
            assert isinstance(figures[f], (int, float)) and figures[f] > 0, (engine, f, figures[f])
        assert figures["tokens_equal_ref"] is True  # the reference against itself, onnxruntime against it
        assert figures["n_tokens"] > 0 and figures["decoder_rows_per_step"] == 1  # greedy: one row per step
        assert figures["encoder_windows"] == 1  # 11 s of audio: one window
        assert figures["encoder_share"] + figures["decoder_share"] <= 1.0
        # the host's read bandwidth before the clip's timed round (one: --quick), the same for every engine
        assert 0 < figures["host_read_gbps_min"] == figures["host_read_gbps_max"]
    assert len({r["value"] for r in e2e if r["figure"] == "host_read_gbps_min"}) == 1
    assert {r["mode"] for r in e2e} == {"greedy"}  # --quick: greedy only
    assert doc["roofline"]["sgemm_gflops"] > 0 and doc["roofline"]["copy_gbs"] > 0
    ops = [r for r in doc["records"] if r["section"] == "ops"]
    status = {(r["op"], r["shape"]): r["value"] for r in ops if r["figure"] == "status"}
    assert {op for op, _ in status} >= {"linear", "conv1d", "layer_norm", "gelu", "attention", "encoder_layer", "decoder_layer"}
    ref_status = {(r["op"], r["shape"]): r["value"] for r in ops if r["figure"] == "status" and r["engine"] == "numpy"}
    assert set(ref_status.values()) == {"native"}  # the reference runs every op itself
    native = [k for k, v in status.items() if v == "native"]
    ratios = [r["value"] for r in ops if r["figure"] == "roofline_ratio" and r["engine"] == "numpy"]
    assert len(ratios) == len(ref_status) and all(x > 0 for x in ratios) and native


def test_every_engine_runs_in_a_process_of_its_own(quick_run):
    """The timed runs of each engine happen in one worker process, not the parent and not another engine's;
    the per-op benchmarks and the roofline have workers of their own too."""
    out, _ = quick_run
    doc = json.loads((out / "b.json").read_text())
    parent = doc["pids"]["parent"]
    run_pids = {r["engine"]: r["value"] for r in doc["records"] if r["section"] == "e2e" and r["figure"] == "worker_pids"}
    assert set(run_pids) == {"numpy", "onnxruntime"}
    for engine, pids in run_pids.items():
        assert len(pids) == 1 and pids[0] != parent, (engine, pids, parent)
        assert pids[0] == doc["pids"]["engines"][engine]
    assert run_pids["numpy"] != run_pids["onnxruntime"]
    others = [doc["pids"]["roofline"], *doc["pids"]["ops"].values()]
    assert len(set(others)) == len(others) == 3
    assert not set(others) & {parent, *(p[0] for p in run_pids.values())}


def test_blas_facts_in_the_header(quick_run):
    """The kernel the workers ran is reported; the forced kernel of this machine is named, measured and, with
    --native-blas, kept out of the workers."""
    out, proc = quick_run
    doc = json.loads((out / "b.json").read_text())
    b = doc["blas"]
    assert b["env_set"] == {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512"}
    assert b["workers_env"] == {"OPENBLAS_CORETYPE": None, "OPENBLAS_L2_SIZE": None}
    assert b["forced"]["forced_kernel"] == "Haswell"
    assert b["forced"]["forced_gflops"] > 0 and b["forced"]["native_gflops"] > 0
    arch = {lib["architecture"] for e in doc["engines"] for lib in e["blas"]}
    assert arch and all(isinstance(a, str) and a for a in arch)
    md = (out / "b.md").read_text()
    assert "OPENBLAS_CORETYPE=Haswell" in md and "--native-blas" in md and "kernel" in md
    assert "BLAS in the workers" in proc.stdout


def test_markdown_tables(quick_run):
    out, proc = quick_run
    md = (out / "b.md").read_text()
    assert "whisperkit-bench --backend numpy" in md and "shared" in md  # command and the noise warning
    summary = md.split("### Warm transcribe()", 1)[1].split("###", 1)[0]
    assert re.search(r"\| engine \| jfk_16k greedy \|", summary) and re.search(r"\| numpy \| \d+\.\d{3} \|", summary)
    detail = md.split("### End to end: jfk_16k.wav", 1)[1].split("###", 1)[0]
    rows = [ln for ln in detail.splitlines() if ln.startswith("| ")]
    header = next(ln for ln in rows if ln.startswith("| engine |"))
    assert "decoder / token (ms)" in header and "encoder share" in header
    assert re.search(r"Host read bandwidth before each timed round: \d+\.\d GB/s", detail)
    numpy_row = next(ln for ln in rows if ln.startswith("| numpy |"))
    assert numpy_row.count("|") == header.count("|")
    assert re.search(r"\| numpy \| \d+\.\d+ \| \d+\.\d+ \| \d+\.\d+ \| \d+ \| \d+% \|", numpy_row), numpy_row
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert sum(ln.startswith("| encoder_layer |") for ln in rows) == 1
    assert "numpy" in proc.stdout and "RTF" in proc.stdout  # the terminal table


def test_png_is_a_png(quick_run):
    out, _ = quick_run
    data = (out / "b.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert width >= 200 and height >= 50 and depth == 8 and colour == 2
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29]) & 0xFFFFFFFF
    idat = data.index(b"IDAT")
    raw = zlib.decompress(data[idat + 4:idat + 4 + struct.unpack(">I", data[idat - 4:idat])[0]])
    assert len(raw) == height * (1 + 3 * width)
    assert data.endswith(b"IEND\xaeB`\x82")


def test_unknown_backend_is_one_clear_error(capsys):
    from whisperkit.bench.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["--backend", "no-such-backend", "--ops"])
    assert exc.value.code == 2
    assert "unknown backend" in capsys.readouterr().err


def test_missing_peer_is_a_note_not_an_error():
    from whisperkit.bench.engines import peer_available
    for name in ("faster-whisper-fp32", "faster-whisper-int8", "openai-whisper"):
        reason = peer_available(name)
        assert reason is None or "not installed" in reason


def test_openai_state_dict_splits_fused_projections():
    from whisperkit.bench.engines import openai_state_dict
    from whisperkit.weights import resolve_model
    w = resolve_model("tiny.en")
    sd = openai_state_dict(w)
    n = w.dims.n_audio_state
    assert sd["encoder.blocks.0.attn.key.weight"].shape == (n, n)
    assert "encoder.blocks.0.attn.key.bias" not in sd
    assert (sd["decoder.blocks.1.cross_attn.value.weight"] == w.tensors["decoder.blocks.1.cross_attn.kv.weight"][n:]).all()
    assert (sd["decoder.blocks.0.mlp.2.bias"] == w.tensors["decoder.blocks.0.mlp.fc2.bias"]).all()


ABSENT_PLUGIN = """from whisperkit import Backend, hookimpl


class Absent(Backend):
    name = "bench-test-absent"

    def unavailable_reason(self):
        return "its library is not installed"


@hookimpl
def whisperkit_backends():
    return [Absent()]
"""


def test_unusable_backend_is_listed_as_skipped(tmp_path):
    """A third-party plugin installed beside whisperkit (an entry point, seen by the bench's workers, which
    load the plugins; the parent does not) that cannot run here is listed as skipped, with its reason."""
    site = tmp_path / "site"
    dist = site / "bench_test_absent-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "bench_test_absent.py").write_text(ABSENT_PLUGIN)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-test-absent\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[whisperkit.backends]\nbench-test-absent = bench_test_absent\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(BENCH + ["--backend", "bench-test-absent", "--ops", "--quick", "--json", str(tmp_path / "s.json")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "s.json").read_text())
    assert {"engine": "bench-test-absent", "kind": "backend", "reason": "its library is not installed"} in doc["skipped"]
    assert "its library is not installed" in proc.stdout


def test_bad_beam_argument(capsys):
    from whisperkit.bench.cli import main
    for bad in ("0", "x", "1,-5", ""):
        with pytest.raises(SystemExit) as exc:
            main(["--beam", bad, "--ops"])
        assert exc.value.code == 2
        assert "--beam" in capsys.readouterr().err


def test_cli_mode_times_fresh_processes(tmp_path):
    """--cli: the user's command, cold, each run its own process with its peak RSS; no peers here."""
    out = tmp_path / "c.json"
    proc = subprocess.run(BENCH + ["--backend", "numpy", "--warmup", "0", "--beam", "1", "--no-peers", "--no-ops", "--no-cold", "--batch", "0",
                                   "--cli", "--runs", "2", "--audio", str(shared("audio", "jfk_16k.wav")), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    recs = [r for r in doc["records"] if r["section"] == "cli"]
    figures = {(r["engine"], r["figure"]): r["value"] for r in recs}
    for label in ("whisperkit transcribe FILE", "whisperkit transcribe FILE --backend numpy"):
        assert (label, "error") not in figures, figures[(label, "error")]
        assert figures[(label, "cli_runs")] == 2
        assert figures[(label, "cli_wall_median_s")] > 0.1  # a whole process: import, load, decode
        assert 50 < figures[(label, "cli_peak_rss_median_mb")] < 24 * 1024
    assert "The command, cold" in proc.stdout


# ------------------------------------------------------------------------------------------ --batch / --long
BATCH_FIGURES = {"throughput_sequential_x_realtime", "throughput_batched_x_realtime", "batch_speedup", "batch_tokens_equal",
                 "sequential_s", "batched_s", "batch_audio_s", "batch_files", "batch_size"}


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory):
    """numpy, jfk + pv_en, --batch 2, no per-op, no cold start: the batch section end to end."""
    out = tmp_path_factory.mktemp("bench_batch")
    cmd = [sys.executable, "-c", "import sys; from whisperkit.bench.cli import main; sys.exit(main())",
           "--backend", "numpy", "--quick", "--no-peers", "--no-ops", "--no-cold", "--batch", "2",
           "--audio", str(shared("audio", "jfk_16k.wav")), "--audio", str(shared("audio", "pv_en.wav")),
           "--json", str(out / "b.json"), "--markdown", str(out / "b.md")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_batch_records(batch_run):
    out, _ = batch_run
    doc = json.loads((out / "b.json").read_text())
    recs = [r for r in doc["records"] if r["section"] == "batch" and r["engine"] == "numpy"]
    figures = {r["figure"]: r["value"] for r in recs}
    assert BATCH_FIGURES <= set(figures), BATCH_FIGURES - set(figures)
    assert "error" not in figures, figures.get("error")
    assert figures["batch_size"] == 2 and figures["batch_files"] == 2  # the two clips, each once: at least 2 files
    durations = {c["clip"]: c["duration_s"] for c in doc["clips"]}
    assert figures["batch_audio_s"] == pytest.approx(durations["jfk_16k.wav"] + durations["pv_en.wav"])
    for f in ("throughput_sequential_x_realtime", "throughput_batched_x_realtime"):
        wall = figures["sequential_s" if "sequential" in f else "batched_s"]
        assert figures[f] == pytest.approx(figures["batch_audio_s"] / wall)  # audio hours per wall-clock hour
    assert figures["batch_speedup"] == pytest.approx(figures["sequential_s"] / figures["batched_s"])
    assert figures["batch_tokens_equal"] is True  # temperature 0: batching must not change a token
    assert doc["batch"]["clips"] == ["jfk_16k.wav", "pv_en.wav"]


def test_batch_markdown_and_terminal(batch_run):
    out, proc = batch_run
    md = (out / "b.md").read_text()
    assert "### Batch throughput" in md
    section = md.split("### Batch throughput", 1)[1]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ")]
    assert rows[0].startswith("| engine | batch | files |")
    numpy_row = next(ln for ln in rows if ln.startswith("| numpy |"))
    assert numpy_row.count("|") == rows[0].count("|")
    assert re.search(r"\| numpy \| 2 \| 2 \| \d+\.\d \| \d+\.\d+ \| \d+\.\d+ \| \d+\.\d \| \d+\.\d \| \d+\.\d\d× \| yes \|", numpy_row), numpy_row
    assert "Batch throughput" in proc.stdout and "Long file" not in proc.stdout


def test_batch_file_set_repeats_whole_clip_lists():
    import numpy as np
    from whisperkit.bench.batch import file_set
    clips = [("a", np.zeros(3, np.float32)), ("b", np.zeros(5, np.float32)), ("c", np.zeros(7, np.float32))]
    assert [n for n, _ in file_set(clips, 1)] == ["a", "b", "c"]
    assert [n for n, _ in file_set(clips, 4)] == ["a", "b", "c"] * 2
    with pytest.raises(ValueError, match="no clips"):
        file_set([], 2)


def test_bad_batch_and_long_arguments(capsys):
    from whisperkit.bench.cli import main
    for argv, msg in ((["--batch", "-1"], "--batch"), (["--long", "0"], "--long"), (["--long", "nan"], "--long"),
                      (["--ops", "--batch", "2"], "--ops")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert msg in capsys.readouterr().err


def test_long_file_builder(tmp_path):
    """write_long: exactly MINUTES long, speech where the clips are, digital silence and noise between them."""
    import numpy as np
    import soundfile as sf
    from whisperkit.audio import load_audio
    from whisperkit.bench.long import GAP_S, NOISE_LEVEL, SR, long_layout, write_long

    clips = [load_audio(shared("audio", c)) for c in ("jfk_16k.wav", "pv_en.wav")]
    minutes = 1.25
    path = tmp_path / "long.wav"
    duration = write_long(path, minutes, clips)
    info = sf.info(str(path))
    assert info.samplerate == SR and info.channels == 1
    assert info.frames == int(minutes * 60 * SR) and duration == pytest.approx(minutes * 60)

    # per-second RMS, read back a block at a time
    rms = np.concatenate([np.sqrt(np.mean(b.reshape(-1, SR) ** 2, axis=1))
                          for b in sf.blocks(str(path), blocksize=10 * SR, dtype="float32") if len(b) == 10 * SR])
    assert (rms == 0).sum() >= GAP_S - 2                      # a digital-silence gap
    noise_like = (rms > 0.5 * NOISE_LEVEL) & (rms < 2 * NOISE_LEVEL)
    assert noise_like.sum() >= GAP_S - 2                      # a noise gap
    assert (rms > 4 * NOISE_LEVEL).sum() >= 5                 # speech well above the noise floor
    # the speech sits where the layout puts it: jfk first, so its opening seconds match the clip
    data, _ = sf.read(str(path), frames=len(clips[0]), dtype="float32")
    assert np.abs(data - clips[0]).max() < 1e-3               # PCM_16 rounding only

    pieces = long_layout([len(c) for c in clips], int(minutes * 60 * SR))
    assert sum(n for _, _, n in pieces) == int(minutes * 60 * SR)
    kinds = [k for k, _, _ in pieces]
    assert kinds[:4] == ["clip", "silence", "clip", "noise"]
    with pytest.raises(ValueError):
        long_layout([], 100)


def test_the_long_file_has_a_known_text_and_a_word_error_rate():
    from whisperkit.bench.long import LABELLED, SR, long_layout, normalize, reference_text, word_error_rate
    names = list(LABELLED)
    lengths = [11 * SR, 6 * SR, 36 * SR]
    total = 80 * SR  # jfk, gap, pv_en, gap (57 s), then osr does not fit whole: left out, a gap in its place
    assert [k for k, _, _ in long_layout(lengths, total)][:5] == ["clip", "silence", "clip", "noise", "silence"]
    assert reference_text(names, lengths, total) == LABELLED[names[0]] + " " + LABELLED[names[1]]
    assert reference_text(["pv_de.wav"], [SR], total) is None  # no known text: no WER
    assert normalize("Mr. Quilter's  gospel, AND so!") == "mister quilter's gospel and so"
    assert word_error_rate("a b c d", "a x c") == pytest.approx(50.0)  # one substitution, one deletion of four


def test_long_run_sequential_and_batched(tmp_path):
    """--long end to end on one minute: the sequential and the batched run of a backend, each in its own
    process, with the WER against the clips' known text."""
    cmd = [sys.executable, "-c", "import sys; from whisperkit.bench.cli import main; sys.exit(main())",
           "--backend", "numba", "--quick", "--no-peers", "--no-ops", "--no-cold", "--batch", "0", "--long", "1",
           "--long_batch", "4", "--json", str(tmp_path / "l.json"), "--markdown", str(tmp_path / "l.md")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "l.json").read_text())
    assert doc["long"]["clips"] == ["jfk_16k.wav", "pv_en.wav", "osr_16k.wav"] and doc["long"]["wer"] is True
    figures = {(r["mode"], r["figure"]): r["value"] for r in doc["records"] if r["section"] == "long"}
    for mode in ("sequential", "batched 4"):
        assert figures[mode, "long_duration_s"] == pytest.approx(60.0)
        assert figures[mode, "long_wall_s"] > 0 and figures[mode, "long_tokens"] > 20
        assert 0 <= figures[mode, "long_wer"] < 20, figures  # jfk and pv_en are heard; a few words may differ
    md = (tmp_path / "l.md").read_text().split("### Long file", 1)[1]
    assert re.search(r"\| numba \| batched 4 \| 1\.0 \| \d+\.\d \|", md), md


def test_the_bench_profile_pays_the_cross_kv_of_every_transcription(tiny_on):
    """The bench times warm transcriptions of one clip: each must make its window's cross-attention inputs, as a new
    file's would, also through the profile's wrappers of the graph (set_audio's memo served every warm jfk run
    before).  numba folds a greedy window's K/V projection into its steps: what a window makes is the features'
    layout, a new one every transcription."""
    from helpers import shared
    from whisperkit.bench.worker import Profile, instrument
    model = tiny_on("numba")
    graph = model.graph
    encoder, decoder = graph.encoder, graph.decoder
    prof = Profile()
    instrument(graph, prof)
    made = []
    timed = graph.decoder.set_audio
    graph.decoder.set_audio = lambda cache, feats: (timed(cache, feats), made.append(cache.cross))[0]
    try:
        for _ in range(3):
            model.transcribe(shared("audio", "jfk_16k.wav"), temperature=0.0)
    finally:
        graph.encoder, graph.decoder = encoder, decoder
    assert len(made) == 3 and len({id(c) for c in made}) == 3  # one window each, none taken from the run before
    assert all(c._folded is not None and c.k is None for c in made)  # greedy: folded steps, the K/V never made


def test_the_bench_profile_counts_speculative_rounds_per_token(tiny_on):
    """numba's greedy decoding drafts a few steps a round and verifies them with `head`: the profile counts the head's
    time, and its tokens are the one-token calls less the positions a later round wrote over: the transcription's
    token count (the calls are as many or more)."""
    from helpers import shared
    from whisperkit.bench.worker import Profile, instrument
    model = tiny_on("numba")
    graph = model.graph
    encoder, decoder = graph.encoder, graph.decoder
    prof = Profile()
    instrument(graph, prof)
    try:
        result = model.transcribe(shared("audio", "jfk_16k.wav"), temperature=0.0)
    finally:
        graph.encoder, graph.decoder = encoder, decoder
    p = prof.as_dict(1.0)
    decoded = sum(len(s.tokens) for s in result.segments) + 1  # the window's tokens and its end-of-text
    assert p["decoder_steps"] == decoded and p["decoder_drafted_steps"] == prof.steps >= decoded
    assert p["decoder_head_s"] > 0
    assert p["decoder_ms_per_step"] == pytest.approx(1e3 * (prof.step_s + prof.head_s) / decoded)
