"""whisperkit.distributed: transcription on Ray Data.

The first part needs no Ray: planning the inputs, atomic outputs, the checks of the arguments, that importing
whisperkit does not import Ray.  The second starts a real two-node Ray cluster on this machine (`ray start --head`
with a temporary directory and port, and a second node joining it, one CPU each) and runs jobs on it: tokens
against one-process transcribe(), a corrupt file, the command line, a worker process killed mid-job, a job
interrupted and resumed (that one on a local Ray the command starts itself).

The cluster is stopped by the session ids of the `ray start` processes the fixture started (every process Ray
starts for a node inherits its session), never by `ray stop`, which stops every Ray on the machine.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import importlib.util

import pytest

from helpers import EXE, assert_one_clear_error, shared

# Ray is not imported here: its authentication settings are read when it is imported, after the cluster fixture
# has set them for this process
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="the ray extra (pip install -e '.[ray]'; in 'all') is not installed")

RAY = str(Path(sys.executable).parent / "ray")


# --- planning, outputs, arguments: no Ray ----------------------------------------------------------------------
def test_importing_whisperkit_and_running_other_commands_does_not_import_ray():
    code = ("import sys, whisperkit, whisperkit.api, whisperkit.cli, whisperkit.distributed\n"
            "from whisperkit.cli import main, build_parser\n"
            "assert main(['backends']) == 0\n"
            "build_parser().parse_args(['transcribe', 'x.wav', '--ray'])\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def _tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def test_inputs_directories_globs_and_files_become_sorted_items_with_their_output_names(tmp_path):
    from whisperkit.distributed.plan import expand_inputs
    _tree(tmp_path / "in", {"b.wav": b"x", "a.FLAC": b"x", "sub/c.mp3": b"x", "sub/deep/d.m4a": b"x",
                            "notes.txt": b"x", ".hidden.wav": b"x", ".cache/e.wav": b"x", "out/f.wav": b"x"})
    _tree(tmp_path / "other", {"g.ogg": b"x", "h.opus": b"x", "talk.v2.wav": b"x"})
    items = expand_inputs([tmp_path / "in", str(tmp_path / "other" / "*.o*"), tmp_path / "other" / "talk.v2.wav",
                           tmp_path / "in" / "b.wav"], tmp_path / "in" / "out")
    got = [(Path(i.source).relative_to(tmp_path).as_posix(), i.key) for i in items]
    assert got == [("in/a.FLAC", "a"), ("in/b.wav", "b"), ("in/sub/c.mp3", "sub/c"), ("in/sub/deep/d.m4a", "sub/deep/d"),
                   ("other/g.ogg", "g"), ("other/h.opus", "h"), ("other/talk.v2.wav", "talk.v2")]
    assert items[2].output(str(tmp_path / "o"), "srt") == str(tmp_path / "o" / "sub" / "c.srt")


@pytest.mark.parametrize("files, given, fragments", [
    ({"a/x.wav": b"1", "b/x.flac": b"2"}, ["a/x.wav", "b/x.flac"], ["same outputs x.*", "a/x.wav", "b/x.flac"]),
    ({"x.wav": b"1", "x.mp3": b"2"}, ["."], ["same outputs x.*", "x.mp3", "x.wav"]),
    ({"whisperkit-manifest.wav": b"1"}, ["."], ["same outputs whisperkit-manifest.*", "the job's manifest"]),
    ({}, ["missing.wav"], ["input not found: ", "missing.wav"]),
    ({"notes.txt": b"1"}, ["."], ["holds or matches no audio file"]),
    ({"a.wav": b"1"}, ["*.flac"], ["'*.flac' holds or matches no audio file"]),
    ({}, [], ["at least one path"]),
])
def test_inputs_that_match_nothing_or_collide_are_one_clear_error(tmp_path, monkeypatch, files, given, fragments):
    from whisperkit.distributed.plan import expand_inputs
    from whisperkit.errors import WhisperkitError
    _tree(tmp_path, files)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WhisperkitError) as err:
        expand_inputs(given, tmp_path / "out")
    for f in fragments:
        assert f in str(err.value), (f, str(err.value))


def _result():
    from whisperkit.transcribe import Segment, TranscriptionResult
    seg = Segment(id=0, seek=0, start=0.0, end=2.5, text=" Hello there.", tokens=[50363, 15496, 612, 13, 50488],
                  temperature=0.0, avg_logprob=-0.2, compression_ratio=0.8, no_speech_prob=0.01)
    return TranscriptionResult(text=" Hello there.", segments=[seg], language="en")


def test_outputs_are_renamed_into_place_whole_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    from whisperkit.distributed import outputs
    from whisperkit.distributed.plan import Item, formats_of, is_complete
    item, out = Item(str(tmp_path / "talk.flac"), "sub/talk"), str(tmp_path / "out")
    formats = formats_of("all")
    assert formats[-1] == "json" and set(formats) == {"txt", "vtt", "srt", "tsv", "json"}
    assert not is_complete(item, out, formats)
    outputs.write_outputs(_result().to_dict(), item, out, formats, {})
    assert sorted(os.listdir(tmp_path / "out" / "sub")) == [f"talk.{f}" for f in sorted(formats)]
    assert json.loads(Path(item.output(out)).read_text()) == _result().to_dict()
    assert is_complete(item, out, formats)

    class Boom(Exception):
        pass

    real = outputs.get_writer

    def failing(fmt, where):  # the srt writer dies after the txt and vtt files were written
        if fmt == "srt":
            raise Boom()
        return real(fmt, where)
    monkeypatch.setattr(outputs, "get_writer", failing)
    other = Item(str(tmp_path / "other.wav"), "sub/other")
    with pytest.raises(Boom):
        outputs.write_outputs(_result().to_dict(), other, out, formats, {})
    assert sorted(os.listdir(tmp_path / "out" / "sub")) == [f"talk.{f}" for f in sorted(formats)]  # nothing of it


def test_an_output_is_complete_only_with_every_format_and_a_whole_json(tmp_path):
    from whisperkit.distributed.plan import Item, formats_of, is_complete
    item, out = Item(str(tmp_path / "a.wav"), "a"), str(tmp_path)
    whole = json.dumps(_result().to_dict())
    (tmp_path / "a.json").write_text(whole[: len(whole) // 2])  # cut short: written by something else than the job
    assert not is_complete(item, out, formats_of("json"))
    (tmp_path / "a.json").write_text(json.dumps({"text": "x"}))
    assert not is_complete(item, out, formats_of("json"))
    (tmp_path / "a.json").write_text(whole)
    assert is_complete(item, out, formats_of("json"))
    assert not is_complete(item, out, formats_of(["json", "srt"]))  # asked for an srt it does not have
    (tmp_path / "a.srt").write_text("1\n")
    assert is_complete(item, out, formats_of(["json", "srt"]))


def test_leftovers_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    from whisperkit.distributed.outputs import remove_leftovers
    from whisperkit.distributed.plan import TMP_PREFIX
    _tree(tmp_path, {f"{TMP_PREFIX}abc/a.json": b"{", f"sub/{TMP_PREFIX}x1/b.srt": b"1", f"sub/{TMP_PREFIX}f": b"",
                     "a.json": b"{}", "sub/b.srt": b"1"})
    assert remove_leftovers(str(tmp_path)) == 3
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == ["a.json", "sub/b.srt"]


@pytest.mark.parametrize("kwargs, fragments", [
    (dict(compute_type="float16"), ["compute_type must be one of", "int8", "got 'float16'"]),
    (dict(threads_per_actor=0), ["threads_per_actor must be a positive integer, got 0"]),
    (dict(actors=-1), ["actors must be a positive integer, got -1"]),
    (dict(batch_size=2.5), ["batch_size must be a positive integer, got 2.5"]),
    (dict(beam_sise=5), ["unknown transcribe option 'beam_sise'", "beam_size"]),
    (dict(verbose=True), ["'verbose' cannot be given", "actors print nothing"]),
    (dict(output_format="docx"), ["unknown format 'docx'", "srt"]),
])
def test_bad_arguments_are_one_clear_error_before_ray_starts(tmp_path, kwargs, fragments):
    from whisperkit.distributed import transcribe_dataset  # in this process: Ray is never imported
    from whisperkit.errors import WhisperkitError
    with pytest.raises(WhisperkitError) as err:
        transcribe_dataset(shared("audio", "jfk.flac"), tmp_path, **kwargs)
    for f in fragments:
        assert f in str(err.value), (f, str(err.value))
    assert "ray" not in sys.modules, "Ray was imported for arguments refused before it is needed"


def test_the_pool_fits_the_nodes_cpus():
    from whisperkit.distributed.cluster import size_pool
    from whisperkit.errors import WhisperkitError
    assert size_pool([1, 1], None, 1) == 2
    assert size_pool([4, 3], None, 2) == 3  # an actor's CPUs are on one node: 2 + 1
    assert size_pool([4, 3], 2, 2) == 2
    with pytest.raises(WhisperkitError, match=r"threads_per_actor=2: no node has 2 CPUs .*nodes have 1, 1 CPUs"):
        size_pool([1, 1], None, 2)
    with pytest.raises(WhisperkitError, match=r"actors=3 with threads_per_actor=1 need 3 places .*room for 2"):
        size_pool([1, 1], 3, 1)


def test_limit_threads_sets_blas_and_every_backend():
    from threadpoolctl import threadpool_info

    from whisperkit.distributed.stages import limit_threads
    from whisperkit.threads import get_num_threads, set_num_threads
    before = get_num_threads()
    try:
        limit_threads(1)
        assert get_num_threads() == 1
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(i["num_threads"] == 1 for i in blas), blas
    finally:
        set_num_threads(before)
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=before)


@pytest.mark.parametrize("argv, want", [
    (["transcribe", "--ray", "clips/", "-o", "out"], ["transcribe", "--ray=local", "clips/", "-o", "out"]),
    (["transcribe", "--ray", "10.0.0.1:6379", "clips/"], ["transcribe", "--ray", "10.0.0.1:6379", "clips/"]),
    (["transcribe", "--ray", "ray://head:10001", "a.wav"], ["transcribe", "--ray", "ray://head:10001", "a.wav"]),
    (["transcribe", "--ray", "auto", "a.wav"], ["transcribe", "--ray", "auto", "a.wav"]),
    (["transcribe", "a.wav", "--ray"], ["transcribe", "a.wav", "--ray=local"]),
    (["transcribe", "--ray", "--threads", "2", "a"], ["transcribe", "--ray=local", "--threads", "2", "a"]),
])
def test_ray_takes_an_address_only_when_its_value_looks_like_one(argv, want):
    from whisperkit.distributed.cli import ray_argv
    assert ray_argv(argv) == want


@pytest.mark.parametrize("args, fragments", [
    (["--ray", "-"], ["--ray reads files, not standard input"]),
    (["--ray", "--json", "A"], ["--json prints one result"]),
    (["--actors", "2", "A"], ["--actors sizes the actor pool of --ray"]),
])
def test_cli_refuses_what_ray_mode_cannot_do_with_one_clear_error(tmp_path, args, fragments):
    args = [str(shared("audio", "jfk.flac")) if a == "A" else a for a in args]
    proc = subprocess.run([EXE, "transcribe", *args, "-o", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert_one_clear_error(proc, *fragments)


# --- a real two-node cluster on this machine -------------------------------------------------------------------
def transcribe_dataset(*args, **kwargs):
    """whisperkit.distributed.transcribe_dataset in a fresh process (spawned, so it inherits this one's environment,
    the cluster's token included): its report, or the error it raised.  A Ray driver leaves native threads running
    after ray.shutdown() (8 more than before ray.init, seen with ray 2.60) and replaces faulthandler's SIGSEGV
    handler, so one in the test process could take down, silently, tests that run long after it."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from whisperkit.distributed import transcribe_dataset as job
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(job, *args, **kwargs).result()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])  # field 6 (state, ppid, pgrp, session) after "(comm)"


def _processes_of(sessions: set[int] | None) -> dict[int, str]:
    """pid -> command line of every live process in `sessions` (None: of every process)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (sessions is None or _session_of(int(entry)) in sessions):
            try:
                found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass
    return found


def _stop(sessions: set[int], grace: float = 10.0) -> None:
    """SIGTERM to every process of our sessions, SIGKILL to those still there after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in _processes_of(sessions):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while _processes_of(sessions) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _processes_of(sessions):
            return


class Cluster:
    """Two Ray nodes of 1 CPU each on this machine, joined at 127.0.0.1:<port>, with their own temporary directory
    and authentication token.  A node's processes share one session id (its workers too), which is how they are
    found again: the sessions of the processes whose command line names our temporary directory."""

    def __init__(self):
        self.temp_dir = tempfile.mkdtemp(prefix="wkt-", dir="/tmp")  # short: Ray's unix sockets live under it
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
                        RAY_USAGE_STATS_ENABLED="0")
        self.sessions: set[int] = set()
        common = ["--num-cpus=1", "--object-store-memory=100000000", f"--temp-dir={self.temp_dir}",
                  "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        try:
            self._start("--head", f"--port={self.port}", "--include-dashboard=false", *common)
            self._start(f"--address={self.address}", *common)
        except BaseException:
            self.stop()
            raise
        assert len(self.sessions) == 2, self.sessions

    def _start(self, *args):
        proc = subprocess.run([RAY, "start", *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True, timeout=180)
        self.sessions |= self._our_sessions()
        assert proc.returncode == 0, proc.stdout

    def _our_sessions(self) -> set[int]:
        return {_session_of(pid) for pid, cmd in _processes_of(None).items() if self.temp_dir in cmd} - {None}

    def workers(self, title: str = "ray::MapWorker") -> dict[int, str]:
        return {pid: cmd for pid, cmd in _processes_of(self.sessions).items() if cmd.startswith(title)}

    def stop(self):
        self.sessions |= self._our_sessions()
        _stop(self.sessions)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=c.env["RAY_AUTH_TOKEN"])  # this process's driver joins it
    try:
        yield c
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        c.stop()
        assert "ray" not in sys.modules, "a Ray driver ran in the test process (see transcribe_dataset above)"
        assert not _processes_of(c.sessions), "processes of the test cluster left running"
        assert not [cmd for cmd in _processes_of(None).values() if c.temp_dir in cmd]


CLIPS = ["jfk.flac", "jfk_16k.wav", "osr_8k.wav", "pv_en.wav", "tts_en/tts_00.wav"]


def _clips_dir(root: Path, names=CLIPS, corrupt=True, damaged=False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(shared("audio", name), root / Path(name).name)
    jfk = shared("audio", "jfk.flac").read_bytes()
    if corrupt:  # the first 300 bytes of a FLAC file: a header, then nothing
        (root / "broken.flac").write_bytes(jfk[:300])
    if damaged:  # 60% of a FLAC file: its readable part is transcribed, with a warning
        (root / "jfk_cut.flac").write_bytes(jfk[: len(jfk) * 6 // 10])
    return root


def _tokens(result: dict) -> list[list[int]]:
    return [s["tokens"] for s in result["segments"]]


def _assert_same_result(got: dict, want: dict, name: str) -> None:
    """The whole to_dict(): the same text, language, warnings, segments and times; the probabilities to float32
    rounding (a process with another thread count sums in another order)."""
    assert {k: v for k, v in got.items() if k != "segments"} == {k: v for k, v in want.items() if k != "segments"}
    assert len(got["segments"]) == len(want["segments"]), name
    for g, w in zip(got["segments"], want["segments"]):
        assert g.keys() == w.keys(), name
        for key in g:
            if key in ("avg_logprob", "compression_ratio", "no_speech_prob"):
                assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-5), (name, key)
            else:
                assert g[key] == w[key], (name, key)


def test_two_node_cluster_gives_the_one_process_tokens_and_reports_the_corrupt_file(cluster, tmp_path):
    from whisperkit import load_model
    clips = _clips_dir(tmp_path / "clips", damaged=True)
    report = transcribe_dataset(clips, tmp_path / "out", address=cluster.address, threads_per_actor=1, progress=False)
    assert report.counts == dict(transcribed=len(CLIPS) + 1, skipped=0, failed=1, pending=0)
    assert report.actors == 2

    model = load_model("tiny.en")
    damaged = json.loads((tmp_path / "out" / "jfk_cut.json").read_text())
    assert len(damaged["warnings"]) == 1 and "is damaged" in damaged["warnings"][0], damaged
    for name in CLIPS + ["jfk_cut.flac"]:
        stem = Path(name).stem
        got = json.loads((tmp_path / "out" / f"{stem}.json").read_text())
        with pytest.warns(UserWarning) if name == "jfk_cut.flac" else contextlib.nullcontext():
            want = model.transcribe(str(clips / Path(name).name)).to_dict()
        assert _tokens(got) == _tokens(want) and got["text"] == want["text"], name
        _assert_same_result(got, want, name)
    manifest = json.loads((tmp_path / "out" / "whisperkit-manifest.json").read_text())
    assert [Path(r["source"]).name for r in manifest["inputs"]] == sorted(p.name for p in clips.iterdir())
    broken = next(r for r in manifest["inputs"] if r["source"].endswith("broken.flac"))
    assert broken["status"] == "failed" and str(clips / "broken.flac") in broken["error"], broken
    assert not (tmp_path / "out" / "broken.json").exists()
    nodes = {r["worker"].rsplit("(node ", 1)[1] for r in manifest["inputs"] if r["status"] == "transcribed"}
    assert len(nodes) == 2, manifest["inputs"]  # one actor on each node: both did work
    assert manifest["counts"]["failed"] == 1 and manifest["audio_seconds"] == pytest.approx(
        sum(r["audio_seconds"] for r in manifest["inputs"]), abs=1e-3)


def test_files_transcribed_together_with_batch_size_give_the_one_process_tokens_at_temperature_0(cluster, tmp_path):
    from whisperkit import load_model
    clips = _clips_dir(tmp_path / "clips", ["jfk.flac", "pv_en.wav", "osr_8k.wav"])
    report = transcribe_dataset(clips, tmp_path / "out", address=cluster.address, batch_size=2, temperature=0.0,
                                progress=False)
    assert report.counts == dict(transcribed=3, skipped=0, failed=1, pending=0)
    model = load_model("tiny.en")
    for name in ["jfk.flac", "pv_en.wav", "osr_8k.wav"]:
        got = json.loads((tmp_path / "out" / f"{Path(name).stem}.json").read_text())
        assert _tokens(got) == _tokens(model.transcribe(str(clips / name), temperature=0.0).to_dict()), name


def test_an_actor_needing_more_cpus_than_a_node_has_is_one_clear_error(cluster, tmp_path):
    from whisperkit.errors import WhisperkitError
    with pytest.raises(WhisperkitError, match=r"threads_per_actor=2: no node has 2 CPUs .*nodes have 1, 1 CPUs"):
        transcribe_dataset(shared("audio", "jfk.flac"), tmp_path, address=cluster.address, threads_per_actor=2)


def test_a_model_that_does_not_load_on_the_actors_is_one_clear_error(cluster, tmp_path):
    from whisperkit.errors import WhisperkitError
    with pytest.raises(WhisperkitError) as err:
        transcribe_dataset(_clips_dir(tmp_path / "clips", ["pv_en.wav"], corrupt=False), tmp_path / "out",
                           address=cluster.address, model="no-such-model", progress=False)
    assert str(err.value).startswith("the model could not be loaded on ")
    assert "'no-such-model' is not a local path, a bundled model" in str(err.value)
    manifest = json.loads((tmp_path / "out" / "whisperkit-manifest.json").read_text())
    assert manifest["counts"]["failed"] == 1 and "no-such-model" in manifest["inputs"][0]["error"]


def test_cli_on_the_cluster_writes_the_one_process_files_and_exits_with_the_failures(cluster, tmp_path):
    clips = _clips_dir(tmp_path / "clips", ["jfk.flac", "pv_en.wav"])
    env = dict(os.environ)
    proc = subprocess.run([EXE, "transcribe", "--ray", cluster.address, str(clips), "-o", str(tmp_path / "out"),
                           "-f", "srt", "--no-progress"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 1, proc.stderr  # one input failed
    assert "1 of 3 inputs failed" in proc.stderr and "broken.flac" in proc.stderr
    assert "Traceback" not in proc.stderr
    one = subprocess.run([EXE, "transcribe", str(clips / "jfk.flac"), "-o", str(tmp_path / "one"), "-f", "srt"],
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    assert (tmp_path / "out" / "jfk.srt").read_text() == (tmp_path / "one" / "jfk.srt").read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "jfk.json", "jfk.srt", "pv_en.json", "pv_en.srt", "whisperkit-manifest.json"]


def test_cli_on_the_cluster_runs_the_actors_in_int8(cluster, tmp_path):
    from whisperkit import WhisperTiny
    clips = _clips_dir(tmp_path / "clips", ["jfk_16k.wav", "pv_en.wav"], corrupt=False)
    proc = subprocess.run([EXE, "transcribe", "--ray", cluster.address, str(clips), "-o", str(tmp_path / "out"),
                           "-f", "json", "--compute_type", "int8", "--beam_size", "None", "--best_of", "None",
                           "--temperature_increment_on_fallback", "None", "--no-progress"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "out" / "whisperkit-manifest.json").read_text())
    assert manifest["options"]["compute_type"] == "int8" and manifest["counts"]["transcribed"] == 2
    int8 = WhisperTiny(compute_type="int8")
    for name in ["jfk_16k.wav", "pv_en.wav"]:
        got = json.loads((tmp_path / "out" / f"{Path(name).stem}.json").read_text())
        assert _tokens(got) == _tokens(int8.transcribe(str(clips / name), temperature=0.0).to_dict()), name
    assert "ask not what your country can do for you" in json.loads(
        (tmp_path / "out" / "jfk_16k.json").read_text())["text"].lower().replace(",", "")


def test_a_worker_killed_mid_job_loses_nothing_and_duplicates_nothing(cluster, tmp_path):
    from whisperkit.distributed.plan import TMP_PREFIX
    clips = tmp_path / "clips"
    clips.mkdir()
    for k in range(10):  # ten inputs of 35.5 s (a second or so each on one thread)
        shutil.copy(shared("audio", "osr_16k.wav" if k % 2 else "osr_8k.wav"), clips / f"osr_{k:02d}.wav")
    out = tmp_path / "out"
    killed: dict = {}

    def kill_one_actor_once_outputs_appear():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = list(out.glob("*.json"))
            actors = cluster.workers()
            if done and actors:
                killed["before"] = set(actors)
                killed["outputs"] = len(done)
                killed["pid"] = pid = sorted(actors)[0]
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor_once_outputs_appear, daemon=True)
    killer.start()
    report = transcribe_dataset(clips, out, address=cluster.address, progress=False)
    killer.join(timeout=10)
    assert "pid" in killed, "no actor was found to kill"
    assert killed["outputs"] < 10, "the job was over before the kill"
    assert not Path(f"/proc/{killed['pid']}").exists()
    assert report.counts == dict(transcribed=10, skipped=0, failed=0, pending=0), report.rows
    assert sorted(p.name for p in out.iterdir()) == sorted([f"osr_{k:02d}.json" for k in range(10)]
                                                           + ["whisperkit-manifest.json"])
    for k in range(10):
        result = json.loads((out / f"osr_{k:02d}.json").read_text())
        assert "gold ring" in result["text"] and result["segments"], k
    assert not [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)]
    manifest = json.loads((out / "whisperkit-manifest.json").read_text())
    assert sorted(Path(r["source"]).name for r in manifest["inputs"]) == [f"osr_{k:02d}.wav" for k in range(10)]
    pids = {int(r["worker"].split(" pid ")[1].split()[0]) for r in manifest["inputs"]}
    assert pids - killed["before"], ("no input was done by the restarted actor", pids, killed)


def test_a_job_interrupted_half_way_resumes_with_only_the_missing_inputs(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    for k in range(8):
        shutil.copy(shared("audio", "osr_16k.wav"), clips / f"osr_{k}.wav")
    out = tmp_path / "out"
    tmp = tempfile.mkdtemp(prefix="wkt-", dir="/tmp")  # the local Ray's directory goes in here (TMPDIR)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(TMPDIR=tmp, RAY_USAGE_STATS_ENABLED="0")
    home_token = Path.home() / ".ray" / "auth_token"
    token_before = home_token.exists()
    command = [EXE, "transcribe", "--ray", str(clips), "-o", str(out), "-f", "json", "--actors", "2"]
    try:
        first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
        deadline = time.monotonic() + 300
        while len(list(out.glob("osr_*.json"))) < 3 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)  # Ctrl-C
        _, err1 = first.communicate(timeout=120)
        assert first.returncode == 130, err1
        _assert_gone(tmp)  # the local Ray it started stopped with it
        done = {p.name: p.stat() for p in out.glob("osr_*.json")}
        assert 3 <= len(done) < 8, (len(done), err1)
        interrupted = json.loads((out / "whisperkit-manifest.json").read_text())
        assert interrupted["interrupted"] and interrupted["counts"]["pending"] == 8 - len(done), interrupted["counts"]

        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stderr
        manifest = json.loads((out / "whisperkit-manifest.json").read_text())
        assert manifest["counts"] == dict(transcribed=8 - len(done), skipped=len(done), failed=0, pending=0)
        assert f"{8 - len(done)} transcribed, {len(done)} skipped" in second.stderr
        # the throughput at the end: overall and per actor
        assert re.search(r"s of audio in [\d.]+ s: [\d.]+ audio hours per wall hour; 2 actors x 1 thread: [\d.]+ per "
                         r"actor", second.stderr), second.stderr
        workers = re.findall(r"pid \d+ \(node \w+\), backend \w+: (\d+) files", second.stderr)
        assert workers and sum(map(int, workers)) == 8 - len(done), second.stderr
        for name, stat in done.items():  # not written again
            now = (out / name).stat()
            assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), name
        assert sorted(p.name for p in out.glob("*.json")) == sorted([f"osr_{k}.json" for k in range(8)]
                                                                    + ["whisperkit-manifest.json"])
        _assert_gone(tmp)
        assert not list(Path(tmp).iterdir()), "the local Ray's temporary directory was left behind"
        assert home_token.exists() == token_before, "the local Ray wrote ~/.ray/auth_token"
    finally:
        _stop({_session_of(pid) for pid, cmd in _processes_of(None).items() if tmp in cmd} - {None})
        shutil.rmtree(tmp, ignore_errors=True)


def _assert_gone(path: str, wait: float = 20.0) -> None:
    """No process names `path` (a local Ray's directory) any more, after up to `wait` seconds of shutting down."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        left = [cmd for cmd in _processes_of(None).values() if path in cmd]
        if not left:
            return
        time.sleep(0.2)
    raise AssertionError(f"processes of the local Ray still running: {left}")
