"""`whisperkit serve`, run as a user runs it: the real server (uvicorn, 127.0.0.1, a free port) in a subprocess,
called with the official `openai` client and, for what that client cannot send, raw HTTP.

Three servers: `server` (tiny.en and base, API key from the environment, 2 MiB uploads) for the API and the
hostile requests; `busy` (one slot, a queue of 2, --api_key) for the queue bound and the streamed upload;
`loaded` (tiny.en) for the load test.  The full load test (8 clients x 50 requests) is marked slow; the default
run keeps 8 clients x 5 requests.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import soundfile

from helpers import EXE, assert_one_clear_error, shared

KEY = "test-key-4f1c"  # the `server`'s key, given through the environment
BUSY_KEY = "busy-key-90ad"  # the `busy` server's, given with --api_key
START_TIMEOUT = 120


# --- a server in a subprocess ---------------------------------------------------------------------------------
class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path, tmp: Path, key: str | None):
        self.proc, self.url, self.log, self.tmp, self.key = proc, url, log, tmp, key
        self.host, self.port = re.match(r"http://([^:]+):(\d+)", url).groups()

    def client(self, **kwargs) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)  # a 429 is to be seen, not retried, unless a test asks
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=kwargs.pop("api_key", self.key or "unused"),
                             timeout=300, **kwargs)

    def request(self, method: str, path: str, body=None, headers: dict | None = None,
                chunked: bool = False) -> tuple[int, dict, bytes]:
        """Raw HTTP (for bodies the openai client would never send): status, headers, body."""
        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def healthy(self) -> bool:
        status, _, body = self.request("GET", "/health")
        return status == 200 and json.loads(body)["status"] == "ok"

    def status_line(self, field: str) -> int:
        """A field of /proc/<pid>/status, in KiB (VmRSS, VmHWM)."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))

    def leftover_uploads(self) -> list[str]:
        return sorted(p.name for p in self.tmp.glob("whisperkit-upload-*"))


@contextlib.contextmanager
def running_server(workdir: Path, *args: str, env: dict | None = None, key: str | None = None):
    """`whisperkit serve --port 0 ARGS` until the block ends; its uploads go to workdir/tmp (TMPDIR)."""
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    log = workdir / "server.log"
    full_env = {k: v for k, v in os.environ.items() if k != "WHISPERKIT_API_KEY"}  # only the key a test gives
    full_env.update(TMPDIR=str(tmp), **(env or {}))
    with open(log, "wb") as out:
        proc = subprocess.Popen([EXE, "serve", "--port", "0", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=full_env)
    try:
        server = Server(proc, _wait_for_url(proc, log), log, tmp, key)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(OSError):
                if server.healthy():
                    break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_url(proc: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+)", log.read_text())
        if found:
            return found.group(1)
        if proc.poll() is not None:
            pytest.fail(f"whisperkit serve exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    pytest.fail(f"whisperkit serve did not start in {START_TIMEOUT} s:\n{log.read_text()}")


def assert_clean_log(server: Server) -> None:
    """No traceback in the server's log (every error was an answer, none a crash) and no upload left behind."""
    text = server.log.read_text()
    assert "Traceback" not in text, text[-5000:]
    assert server.leftover_uploads() == []


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("server")
    with running_server(workdir, "--model", "tiny.en", "--model", "base", "--max_upload_mb", "2",
                        env={"WHISPERKIT_API_KEY": KEY}, key=KEY) as s:
        yield s
        assert_clean_log(s)


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("busy")
    with running_server(workdir, "--workers", "1", "--max_queue", "2", "--api_key", BUSY_KEY,
                        "--max_upload_mb", "128", key=BUSY_KEY) as s:
        yield s
        assert_clean_log(s)


@pytest.fixture(scope="module")
def local():
    """tiny.en in this process, as the server loads it: what transcribe() gives is what the server must give."""
    from whisperkit import load_model
    return load_model("tiny.en")


def clip(name: str) -> Path:
    return shared("audio", *name.split("/"))


def transcribe_upload(client: openai.OpenAI, name: str, **kwargs):
    with open(clip(name), "rb") as f:
        return client.audio.transcriptions.create(file=f, model=kwargs.pop("model", "whisper-1"), **kwargs)


# --- OpenAI's API with the official client ----------------------------------------------------------------------
def test_json_text_is_transcribe_s_text(server, local):
    got = transcribe_upload(server.client(), "jfk.flac")
    want = local.transcribe(str(clip("jfk.flac"))).text.strip()
    assert got.text == want
    assert "ask not what your country can do for you" in got.text


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
def test_text_srt_and_vtt_are_the_writers_output(server, local, fmt):
    import io

    from whisperkit.writers import WRITERS
    got = transcribe_upload(server.client(), "jfk.flac", response_format=fmt)
    result = local.transcribe(str(clip("jfk.flac")))
    if fmt == "text":
        assert got.strip() == result.text.strip()
        return
    out = io.StringIO()
    WRITERS[fmt](".").write_result(result.to_dict(), file=out)
    assert got == out.getvalue()
    first = {"srt": "1\n00:00:00,000 --> ", "vtt": "WEBVTT\n\n00:00.000 --> "}[fmt]
    assert got.startswith(first) and got.count(" --> ") == len(result.segments) >= 1


def test_verbose_json_has_openai_s_segments_and_words(server, local):
    got = transcribe_upload(server.client(), "pv_en.wav", response_format="verbose_json",
                            timestamp_granularities=["word", "segment"])
    want = local.transcribe(str(clip("pv_en.wav")), word_timestamps=True)
    assert type(got).__name__ == "TranscriptionVerbose"
    assert got.language == "english" and got.text == want.text.strip()
    assert got.duration == pytest.approx(soundfile.info(str(clip("pv_en.wav"))).duration, abs=0.01)
    assert [(s.id, s.seek, s.start, s.end, s.text, s.tokens, s.temperature) for s in got.segments] == \
           [(s.id, s.seek, s.start, s.end, s.text, s.tokens, s.temperature) for s in want.segments]
    assert [s.avg_logprob for s in got.segments] == pytest.approx([s.avg_logprob for s in want.segments])
    words = [w for s in want.segments for w in s.words]
    assert [(w.word, w.start, w.end) for w in got.words] == [(w["word"].strip(), w["start"], w["end"]) for w in words]
    assert len(got.words) >= 15 and all(a.end <= b.start + 1e-6 for a, b in zip(got.words, got.words[1:]))
    raw = got.model_dump()
    assert set(raw["segments"][0]) >= {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                                       "compression_ratio", "no_speech_prob"}
    assert set(raw["words"][0]) == {"word", "start", "end"}


def test_verbose_json_without_words_has_segments_only(server):
    got = transcribe_upload(server.client(), "jfk.flac", response_format="verbose_json")
    assert got.words is None and len(got.segments) >= 1 and got.segments[-1].end <= got.duration + 0.02


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client marks translations.create so
def test_translation_on_base(server):
    from whisperkit import load_model
    base = load_model("base")
    with open(clip("pv_de.wav"), "rb") as f:
        got = server.client().audio.translations.create(file=f, model="base", response_format="verbose_json")
    want = base.transcribe(str(clip("pv_de.wav")), task="translate")  # transcribe()'s defaults are the API's
    assert got.text == want.text.strip() and got.text
    assert got.language == "german"
    assert got.model_dump().get("task") == "translate"


def test_models_lists_the_loaded_models_and_the_alias(server):
    client = server.client()
    assert [m.id for m in client.models.list().data] == ["tiny.en", "base", "whisper-1"]
    assert client.models.retrieve("whisper-1").model_dump()["alias_of"] == "tiny.en"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("whisper-9")
    assert err.value.body["code"] == "model_not_found"


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_bad_fields_are_400_naming_the_field(server):
    client = server.client()
    cases = [
        (dict(language="xx"), "language", "unknown language 'xx'"),
        (dict(language="de"), "language", "tiny.en is English-only"),
        (dict(temperature=1.5), "temperature", "from 0 to 1, got '1.5'"),
        (dict(response_format="text", timestamp_granularities=["word"]), "timestamp_granularities", "verbose_json"),
    ]
    for kwargs, param, fragment in cases:
        with pytest.raises(openai.BadRequestError) as err:
            transcribe_upload(client, "pv_en.wav", **kwargs)
        assert err.value.body["param"] == param and fragment in err.value.body["message"], err.value.body
    with pytest.raises(openai.BadRequestError) as err, open(clip("pv_en.wav"), "rb") as f:
        client.audio.translations.create(file=f, model="tiny.en")
    assert "English-only and cannot translate" in err.value.body["message"]
    assert server.healthy()


# --- hostile requests ----------------------------------------------------------------------------------------
BOUNDARY = "whisperkit-test-7d1e"


def multipart(*parts: tuple[str, bytes, str | None], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    """A multipart/form-data body of (name, content, filename or None) parts; `close=False` leaves out the
    closing boundary."""
    out = b""
    for name, content, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def form_headers(key: str | None = KEY, boundary: str | None = BOUNDARY) -> dict:
    headers = {"Content-Type": "multipart/form-data" + (f"; boundary={boundary}" if boundary else "")}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def hostile_cases() -> list[tuple[str, dict, int, str | None]]:
    """(case, request keyword arguments, status expected, error code expected or None for a success)."""
    jfk = clip("jfk.flac").read_bytes()
    model = ("model", b"whisper-1", None)
    big = os.urandom(3 << 20)  # 3 MiB: over the server's 2 MiB
    return [
        ("no file", dict(body=multipart(model), headers=form_headers()), 400, "missing_file"),
        ("a text file", dict(body=multipart(model, ("file", b"hello, this is not audio\n" * 40, "notes.txt")),
                             headers=form_headers()), 400, "invalid_audio"),
        ("a 0-byte file", dict(body=multipart(model, ("file", b"", "empty.wav")), headers=form_headers()),
         400, "invalid_audio"),
        ("a truncated FLAC", dict(body=multipart(model, ("file", jfk[: len(jfk) // 2], "jfk_half.flac")),
                                  headers=form_headers()), 200, None),
        ("over the limit (Content-Length)", dict(body=multipart(model, ("file", big, "big.wav")),
                                                 headers=form_headers()), 413, "file_too_large"),
        ("over the limit (chunked)", dict(body=iter([multipart(model, ("file", big, "big.wav"))]),
                                          headers=form_headers(), chunked=True), 413, "file_too_large"),
        ("no API key", dict(body=multipart(model, ("file", jfk, "jfk.flac")), headers=form_headers(key=None)),
         401, "invalid_api_key"),
        ("a wrong API key", dict(body=multipart(model, ("file", jfk, "jfk.flac")),
                                 headers=form_headers(key=KEY[:-1] + "X")), 401, "invalid_api_key"),
        ("multipart cut before its end", dict(body=multipart(model, ("file", jfk[:5000], "jfk.flac"), close=False),
                                              headers=form_headers()), 400, "invalid_multipart"),
        ("multipart without a boundary", dict(body=multipart(model), headers=form_headers(boundary=None)),
         400, "invalid_multipart"),
        ("not multipart at all", dict(body=b"this is not a form", headers=form_headers()), 400, "invalid_multipart"),
        ("an unknown response_format", dict(body=multipart(model, ("response_format", b"xml", None),
                                                           ("file", jfk, "jfk.flac")), headers=form_headers()),
         400, "invalid_value"),
        ("a bad temperature", dict(body=multipart(model, ("temperature", b"hot", None), ("file", jfk, "jfk.flac")),
                                   headers=form_headers()), 400, "invalid_value"),
        ("an unknown model", dict(body=multipart(("model", b"whisper-9", None), ("file", jfk, "jfk.flac")),
                                  headers=form_headers()), 404, "model_not_found"),
    ]


def test_hostile_requests_get_their_status_and_openai_error_json(server):
    table = []
    for case, request, status, code in hostile_cases():
        got, headers, raw = server.request("POST", "/v1/audio/transcriptions", **request)
        body = json.loads(raw)
        table.append(f"| {case} | {got} | {json.dumps(body)} |")
        assert got == status, (case, body)
        assert b"Traceback" not in raw and "whisperkit-upload-" not in raw.decode(), (case, body)
        if code is None:
            continue
        assert headers["content-type"] == "application/json"
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, case
        assert body["error"]["code"] == code and body["error"]["message"], (case, body)
        if status == 401:
            assert headers.get("www-authenticate") == "Bearer"
        assert server.healthy(), f"the server does not answer /health after {case}"
    print("\n".join(["| case | status | body |", "| --- | --- | --- |", *table]))


def test_truncated_flac_gives_the_readable_part_with_a_warning(server, local):
    jfk = clip("jfk.flac").read_bytes()
    status, headers, raw = server.request(
        "POST", "/v1/audio/transcriptions", body=multipart(("file", jfk[: len(jfk) // 2], "jfk_half.flac")),
        headers=form_headers())
    body = json.loads(raw)
    assert status == 200 and headers["x-whisperkit-warnings"] == "1"
    full = local.transcribe(str(clip("jfk.flac"))).text.split()
    assert 4 <= len(body["text"].split()) < len(full) and body["text"].split()[:4] == full[:4]
    (warning,) = body["warnings"]
    assert "'jfk_half.flac' is damaged" in warning and "are transcribed" in warning


def test_error_messages_name_the_upload_not_the_temporary_file(server):
    status, _, raw = server.request("POST", "/v1/audio/transcriptions", headers=form_headers(),
                                    body=multipart(("file", b"RIFF\0\0\0\0WAVEjunk" * 10, "voice memo.wav")))
    message = json.loads(raw)["error"]["message"]
    assert status == 400 and "'voice memo.wav'" in message and "whisperkit-upload-" not in message, message


def test_unknown_paths_and_methods_answer_openai_errors(server):
    for method, path, status in [("GET", "/v1/nothing", 404), ("GET", "/v1/audio/transcriptions", 405)]:
        got, _, raw = server.request(method, path, headers={"Authorization": f"Bearer {KEY}"})
        assert got == status and set(json.loads(raw)["error"]) == {"message", "type", "param", "code"}
    got, _, raw = server.request("GET", "/health")  # no key needed: liveness probes have none
    assert got == 200 and json.loads(raw)["models"] == ["tiny.en", "base"]


# --- the queue bound, the upload on disk ------------------------------------------------------------------------
def test_a_full_queue_gets_429_with_retry_after_and_later_requests_succeed(busy, local):
    want = local.transcribe(str(clip("jfk.flac"))).text.strip()
    n = 10  # at once, against 1 slot + a queue of 2
    start = threading.Barrier(n)

    def one(_):
        client = busy.client()
        start.wait()
        try:
            return "ok", transcribe_upload(client, "jfk.flac").text
        except openai.RateLimitError as exc:
            return exc.status_code, exc.response.headers.get("retry-after"), exc.body

    with ThreadPoolExecutor(n) as pool:
        outcomes = list(pool.map(one, range(n)))
    done = [o[1] for o in outcomes if o[0] == "ok"]
    refused = [o for o in outcomes if o[0] != "ok"]
    print(f"\n{n} at once on 1 slot + a queue of 2: {len(done)} answered, {len(refused)} refused "
          f"(statuses {sorted({o[0] for o in refused})}, Retry-After {sorted({o[1] for o in refused})})")
    assert len(done) >= 3 and len(refused) >= 1, outcomes
    assert done == [want] * len(done)
    for status, retry_after, body in refused:
        assert status == 429 and int(retry_after) >= 1 and body["code"] == "queue_full", (status, retry_after, body)
    for _ in range(3):  # and then the server serves as before
        assert transcribe_upload(busy.client(), "jfk.flac").text == want
    # the official client waits the Retry-After it is given and tries again: every request gets through
    with ThreadPoolExecutor(6) as pool:
        texts = list(pool.map(lambda _: transcribe_upload(busy.client(max_retries=8), "jfk.flac").text, range(6)))
    assert texts == [want] * 6
    assert busy.healthy()


def test_an_upload_goes_to_disk_not_to_memory(busy, tmp_path):
    size = 96 << 20
    block = os.urandom(1 << 20)
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"noise.bin\"\r\n\r\n").encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    body = (chunk for chunk in [head, *[block] * (size >> 20), tail])
    headers = {**form_headers(key=BUSY_KEY), "Content-Length": str(len(head) + size + len(tail))}
    with contextlib.suppress(OSError):  # reset the high-water mark of the server's memory, where Linux allows
        Path(f"/proc/{busy.proc.pid}/clear_refs").write_text("5")
    peak_before = busy.status_line("VmHWM")
    status, _, raw = busy.request("POST", "/v1/audio/transcriptions", body=body, headers=headers)
    assert status == 400 and json.loads(raw)["error"]["code"] == "invalid_audio", raw
    grew_mib = (busy.status_line("VmHWM") - peak_before) / 1024
    print(f"\n{size >> 20} MiB upload: the server's peak RSS grew by {grew_mib:.1f} MiB")
    assert grew_mib < 32, f"the server's peak memory grew by {grew_mib:.0f} MiB for a {size >> 20} MiB upload"
    assert busy.leftover_uploads() == [] and busy.healthy()


# --- load --------------------------------------------------------------------------------------------------------
SHORT_CLIPS = ["jfk.flac", "pv_en.wav", "jfk_16k.wav", "tts_en/tts_00.wav", "tts_en/tts_01.wav", "tts_en/tts_02.wav"]
ALL_CLIPS = SHORT_CLIPS + ["osr_16k.wav", "osr_8k.wav", "tts_en/tts_03.wav", "tts_en/tts_04.wav"]


def run_load(srv: Server, clips: list[str], clients: int, per_client: int, want: dict) -> dict:
    """`clients` threads, each sending `per_client` requests one after another (its clips in turn);
    every answer is checked.  Returns the figures."""
    def client_run(i: int) -> list[tuple[float, str]]:
        client, timings = srv.client(), []
        for j in range(per_client):
            name = clips[(i + j) % len(clips)]
            t = time.perf_counter()
            text = transcribe_upload(client, name).text
            timings.append((time.perf_counter() - t, name))
            assert text == want[name], (name, text, want[name])
        return timings

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        timings = [t for run in pool.map(client_run, range(clients)) for t in run]
    wall = time.perf_counter() - start
    latencies = sorted(t for t, _ in timings)
    audio = sum(soundfile.info(str(clip(name))).duration for _, name in timings)
    return dict(requests=len(timings), seconds=round(wall, 2), requests_per_s=round(len(timings) / wall, 2),
                audio_s_per_s=round(audio / wall, 1), p50_s=round(statistics.median(latencies), 3),
                p95_s=round(latencies[int(0.95 * (len(latencies) - 1))], 3))


def load_test(tmp_path, local, clips: list[str], per_client: int) -> dict:
    want = {name: local.transcribe(str(clip(name))).text.strip() for name in clips}
    with running_server(tmp_path) as srv:
        run_load(srv, clips, clients=8, per_client=1, want=want)  # warm-up: every slot, every clip
        rss_warm = srv.status_line("VmRSS")
        figures = run_load(srv, clips, clients=8, per_client=per_client, want=want)
        rss_end = srv.status_line("VmRSS")
        figures.update(rss_warm_mib=round(rss_warm / 1024, 1), rss_end_mib=round(rss_end / 1024, 1))
        print(f"\nload (8 clients x {per_client} requests): {json.dumps(figures)}")
        assert (rss_end - rss_warm) / 1024 < 50, figures
        assert srv.healthy()
        assert_clean_log(srv)
    return figures


def test_load_8_clients_small(tmp_path, local):
    """The default run's load test: 8 clients x 5 requests of the short clips, 0 errors, every answer right."""
    figures = load_test(tmp_path, local, SHORT_CLIPS, per_client=5)
    assert figures["requests"] == 40


@pytest.mark.slow
def test_load_8_clients_x_50(tmp_path, local):
    """Issue 20's load test: 8 clients x 50 requests of the shared clips (python -m pytest -m slow -s -k load)."""
    figures = load_test(tmp_path, local, ALL_CLIPS, per_client=50)
    assert figures["requests"] == 400


# --- the plan and the command line --------------------------------------------------------------------------------------------
def test_an_unknown_compute_type_is_a_clear_startup_error():
    proc = subprocess.run([EXE, "serve", "--compute_type", "int4"], capture_output=True, text=True, timeout=120)
    assert_one_clear_error(proc, "--compute_type", "'int4'", "float32", "int8")


def test_int8_serves_what_an_int8_model_transcribes(tmp_path):
    from whisperkit import load_model
    want = load_model("tiny.en", compute_type="int8").transcribe(str(clip("jfk.flac"))).text.strip()
    with running_server(tmp_path, "--compute_type", "int8") as srv:
        assert ", int8, " in srv.log.read_text().splitlines()[0]
        assert transcribe_upload(srv.client(), "jfk.flac").text == want


def test_a_port_in_use_is_a_clear_startup_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run([EXE, "serve", "--port", str(port)], capture_output=True, text=True, timeout=300)
    assert_one_clear_error(proc, f"cannot listen on 127.0.0.1:{port}")


def test_whisperkit_and_its_other_commands_do_not_import_the_server_stack():
    code = ("import sys, contextlib, io, whisperkit, whisperkit.cli\n"
            "with contextlib.redirect_stdout(io.StringIO()): whisperkit.cli.main(['backends'])\n"
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'python_multipart') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


@pytest.mark.parametrize("thread_safe, workers, cores, plan", [
    (True, None, 8, (8, 1)),    # one slot per core, one thread each
    (False, None, 8, (1, 8)),   # decodes take turns on the backend's lock: one slot with every core
    (True, 2, 8, (2, 4)),       # slots x threads = the cores
    (True, 16, 8, (16, 1)),     # asked for more slots than cores: one thread each
])
def test_slots_times_threads_is_the_cores(thread_safe, workers, cores, plan):
    from types import SimpleNamespace

    from whisperkit.server import plan_slots
    models = {"m": SimpleNamespace(backend=SimpleNamespace(name="b", thread_safe=thread_safe))}
    assert plan_slots(models, workers, cores) == plan
