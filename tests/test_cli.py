"""The installed `whisperkit` command, run as a user would, and its errors on bad input."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import EXE, assert_one_clear_error, shared


def run(*args, timeout=600, cwd=None):
    """`transcribe` writes its output files to --output_dir, "." by default: tests pass a temporary
    cwd or --output_dir so that nothing lands in the repository."""
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def test_backends_lists_numpy_as_usable_and_marks_the_auto_pick():
    proc = run("backends")
    assert proc.returncode == 0, proc.stderr
    row = next(l for l in proc.stdout.splitlines() if l.startswith("numpy "))
    assert " yes " in row and "linear" in row and "attention" in row
    from whisperkit.registry import build_registry
    pick = build_registry().auto_name()  # the same choice, made in this process
    marked = [l.split()[0] for l in proc.stdout.splitlines() if l.split()[1:2] == ["*"]]
    assert marked == [pick], proc.stdout
    assert f"backend auto picks {pick}" in proc.stdout


def test_transcribe_names_its_backend_and_numpy_still_means_the_reference(tmp_path):
    from whisperkit.registry import build_registry
    pick = build_registry().auto_name()
    audio = shared("audio", "jfk.flac")
    auto = run("transcribe", audio, "--beam_size", "None", "--best_of", "None", "--output_format", "txt", cwd=tmp_path)
    assert auto.returncode == 0, auto.stderr
    assert f"on backend {pick} (auto" in auto.stdout.splitlines()[0]
    ref = run("transcribe", audio, "--backend", "numpy", "--beam_size", "None", "--best_of", "None",
              "--output_format", "txt", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    assert ref.stdout.splitlines()[0] == "whisperkit: tiny.en on backend numpy"
    assert auto.stdout.splitlines()[-1] == ref.stdout.splitlines()[-1]  # token-exact backends: the same text


def test_transcribe_flac_prints_segments_then_text(golden_tiny, tmp_path):
    # greedy (the CLI's default is beam 5, as openai-whisper's `whisper`)
    proc = run("transcribe", shared("audio", "jfk.flac"), "--beam_size", "None", "--best_of", "None", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("whisperkit: tiny.en on backend ")  # the verbose header, as openai-whisper's "Detected language"
    assert lines[1].startswith("[00:00.000 --> 00:07.740]")
    assert lines[-1] == golden_tiny["clips"]["jfk_16k.wav"]["transcribe_greedy"]["text"].strip()
    # --output_format all into the default --output_dir "."
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"jfk.{e}" for e in ("json", "srt", "tsv", "txt", "vtt")]


@pytest.fixture
def bad_inputs(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    zero = tmp_path / "zero.wav"
    sf.write(zero, np.zeros(0, np.float32), 16000)
    return dict(missing=tmp_path / "nope.wav", empty=empty, text=text, zero=zero)


@pytest.mark.parametrize("case, fragment", [
    ("missing", "not found"), ("empty", "empty"), ("text", "not a readable audio file"), ("zero", "no samples")])
def test_bad_audio_gives_one_clear_error(bad_inputs, case, fragment):
    assert_one_clear_error(run("transcribe", bad_inputs[case], cwd=bad_inputs["empty"].parent), str(bad_inputs[case]), fragment)


def test_unknown_backend_gives_one_clear_error(tmp_path):
    assert_one_clear_error(run("transcribe", "--backend", "nosuch", shared("audio", "jfk_16k.wav"), cwd=tmp_path),
                           "unknown backend 'nosuch'", "numpy")


def test_truncated_model_gives_one_clear_error(tmp_path):
    from whisperkit.weights import resolve_model
    src = Path(resolve_model("tiny.en").source)
    src_dir = src if src.is_dir() else src.parent
    bad = tmp_path / "model"
    bad.mkdir()
    data = (src_dir / "model.bin").read_bytes()
    (bad / "model.bin").write_bytes(data[: len(data) // 2])
    shutil.copy(src_dir / "config.json", bad / "config.json")
    shutil.copy(src_dir / "tokenizer.json", bad / "tokenizer.json")
    assert_one_clear_error(run("transcribe", "--model", bad, shared("audio", "jfk_16k.wav"), cwd=tmp_path),
                           "model.bin", "truncated")


def test_convert_writes_a_loadable_hf_directory(tmp_path):
    proc = run("convert", "tiny.en", tmp_path / "hf")
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in (tmp_path / "hf").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    from whisperkit import load_model
    m = load_model(tmp_path / "hf")
    assert m.dims.n_text_layer == 4 and m.dims.n_vocab == 51864


def test_transcribe_reads_standard_input(golden_tiny, tmp_path):
    wav = shared("audio", "jfk_16k.wav").read_bytes()
    proc = subprocess.run([EXE, "transcribe", "-", "--beam_size", "None", "--best_of", "None", "--output_format", "txt"],
                          input=wav, capture_output=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip().splitlines()[-1] == golden_tiny["clips"]["jfk_16k.wav"]["transcribe_greedy"]["text"].strip()
    assert [p.name for p in tmp_path.iterdir()] == ["stdin.txt"]
    named = subprocess.run([EXE, "transcribe", "-", "--output_name", "talk", "--output_format", "srt"],
                           input=shared("audio", "jfk.flac").read_bytes(), capture_output=True, timeout=600, cwd=tmp_path)
    assert named.returncode == 0, named.stderr
    assert (tmp_path / "talk.srt").is_file()
    empty = subprocess.run([EXE, "transcribe", "-"], input=b"", capture_output=True, text=False, timeout=600, cwd=tmp_path)
    assert empty.returncode == 2 and b"standard input held no audio (0 bytes)" in empty.stderr


_GLIBC = hasattr(os, "confstr") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")


@pytest.mark.skipif(not _GLIBC, reason="M_ARENA_MAX is glibc's")
def test_the_command_keeps_one_malloc_arena():
    """`whisperkit transcribe` allocates from one malloc arena (cli.one_malloc_arena): a thread's first
    allocation then maps no arena of its own (more lines in /proc/self/maps without it)."""
    code = ("import ctypes, sys, threading; from whisperkit.cli import one_malloc_arena\n"
            "one = one_malloc_arena() if sys.argv[1] == 'one' else None\n"
            "libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p\n"
            "n = lambda: len(open('/proc/self/maps').read().splitlines())\n"
            "before = n(); t = threading.Thread(target=lambda: libc.malloc(64)); t.start(); t.join()\n"
            "print(one, n() - before)")  # the process's first thread: its stack, and an arena or not
    out = {mode: subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=60)
           for mode in ("one", "default")}
    assert all(r.returncode == 0 for r in out.values()), [r.stderr for r in out.values()]
    one, default = out["one"].stdout.split(), out["default"].stdout.split()
    assert one[0] == "True" and default[0] == "None"
    assert int(default[1]) > int(one[1])
