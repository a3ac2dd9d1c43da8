"""Audio loading and Whisper's log-mel front end, in NumPy.

Decoding is done by libsndfile (through ``soundfile``) for what it reads (wav, flac, ogg, opus, mp3...), and
by FFmpeg's libraries through PyAV for every other container and codec (m4a/aac, mp4 and other videos, webm,
mkv, wma...); resampling by ``soxr``; no ffmpeg program.
The log-mel spectrogram reproduces openai-whisper's ``log_mel_spectrogram`` (periodic Hann
window, centred STFT with reflect padding, last frame dropped, Slaney mel filterbank).
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np

from .errors import AudioError

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30-second chunk
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 frames in a mel spectrogram input
N_SAMPLES_PER_TOKEN = HOP_LENGTH * 2  # the initial convolutions have stride 2
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 10 ms per audio frame
TOKENS_PER_SECOND = SAMPLE_RATE // N_SAMPLES_PER_TOKEN  # 20 ms per audio token

AudioSource = Union[str, os.PathLike, bytes, np.ndarray]  # or a binary file object

__all__ = [
    "SAMPLE_RATE",
    "N_FFT",
    "HOP_LENGTH",
    "CHUNK_LENGTH",
    "N_SAMPLES",
    "N_FRAMES",
    "N_SAMPLES_PER_TOKEN",
    "FRAMES_PER_SECOND",
    "TOKENS_PER_SECOND",
    "load_audio",
    "iter_file_blocks",
    "mel_filters",
    "log_mel_spectrogram",
    "pad_or_trim",
]


# --------------------------------------------------------------------------------------------
# loading


def _check_array(audio: np.ndarray, what: str = "audio array") -> np.ndarray:
    if not isinstance(audio, np.ndarray):
        raise AudioError(f"{what} must be a NumPy array, got {type(audio).__name__}")
    if audio.ndim != 1:
        raise AudioError(
            f"{what} must be 1-D mono samples at {SAMPLE_RATE} Hz, got shape {audio.shape}"
        )
    if np.issubdtype(audio.dtype, np.integer):
        raise AudioError(f"{what} must hold float samples in [-1, 1], got {audio.dtype} "
                         f"(for 16-bit PCM, pass audio.astype(np.float32) / 32768)")
    if not np.issubdtype(audio.dtype, np.floating):
        raise AudioError(f"{what} must have a float dtype, got {audio.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32's range becomes inf
        out = np.ascontiguousarray(audio, dtype=np.float32)
    if out.size and not np.all(np.isfinite(out)):
        bad = int(np.flatnonzero(~np.isfinite(out))[0])
        raise AudioError(
            f"{what} contains NaN or Inf values (or values beyond float32's range), first at sample {bad}"
        )
    return out


# Sample rates a file may declare.  Upsampling multiplies the samples held in memory by
# SAMPLE_RATE / rate, so a hostile header claiming 1 Hz would turn a 1 MB file into gigabytes;
# below 1 kHz there is no speech band to recognise anyway.  The upper bound is generous (768 kHz
# is the highest rate audio interfaces record at).
MIN_FILE_RATE = 1_000
MAX_FILE_RATE = 1_000_000
# Frames x channels per read: soundfile allocates a block of this size up front, so it is bounded
# whatever the header claims (libsndfile allows up to 1024 channels).
_BLOCK_VALUES = 1 << 20


def _open_error(path: Path, exc: BaseException) -> AudioError:
    reason = str(exc).strip() or type(exc).__name__
    return AudioError(f"{path} is not a readable audio file (libsndfile: {reason})")


class AudioDamage(NamedTuple):
    """Where a damaged file's decoding stopped: the readable part before it is transcribed."""

    path: str
    seconds: float  # audio delivered, in seconds of the file
    reason: str  # the decoders' own words

    @property
    def message(self) -> str:
        return (f"{self.path} is damaged ({self.reason}): the {self.seconds:.3f} s of audio that could be "
                "decoded are transcribed")


class AudioDamageWarning(UserWarning):
    """A damaged audio file of which only the readable part is used (see `AudioDamage`)."""


class _Damage:
    """How a decoding that stops part-way ends: with an AudioError (strict, or nothing decoded at all),
    else recorded (in `into`, or as an AudioDamageWarning) while the samples before it are kept."""

    def __init__(self, path: Path, strict: bool, into: list | None):
        self.path, self.strict, self.into = path, strict, into

    def stopped(self, frames: int, rate: int, reason: str) -> None:
        seconds = frames / rate
        if self.strict or frames == 0:
            raise AudioError(f"{self.path}: decoding failed after {seconds:.3f} s ({reason}); "
                             "the file is truncated or corrupt")
        damage = AudioDamage(str(self.path), seconds, reason)
        if self.into is not None:
            self.into.append(damage)
        else:
            import warnings
            warnings.warn(AudioDamageWarning(damage.message), stacklevel=3)


def iter_file_blocks(source: Union[str, os.PathLike], sr: int = SAMPLE_RATE, *, strict: bool = False,
                     damage: list | None = None):
    """Yield the file's audio as consecutive mono float32 blocks at ``sr`` Hz.

    A file whose decoding fails part-way (truncated, garbage inside) gives the audio decoded before the
    failure. libsndfile's failure hands over to FFmpeg, which often decodes further. Where it stopped is
    appended to `damage` as an `AudioDamage`, or, without that list, warned as an `AudioDamageWarning`.
    With ``strict`` it is an AudioError instead, and so is a file of which nothing decodes.

    Never trusts the header's frame count: the file is read in blocks of at most
    ``_BLOCK_VALUES`` values, so memory is bounded by what the file really holds, not by what it
    claims. Channels are averaged (float64 accumulation) and every block is checked: a NaN or Inf
    sample is an :class:`AudioError` naming the file and the time of the first bad sample (not
    silently replaced: the file is damaged and its text could not be trusted). Resampling is a soxr
    stream (bit-identical to one-shot ``soxr.resample``). Raises :class:`AudioError` for a missing,
    empty, unreadable or unsupported file."""
    path = _check_path(source)
    import soundfile

    try:
        f = soundfile.SoundFile(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, OverflowError) as exc:
        yield from _iter_av_blocks(path, sr, exc, _Damage(path, strict, damage))  # a format libsndfile does not know
        return
    except OSError as exc:
        raise AudioError(f"cannot read audio file {path}: {exc}") from None
    with f:
        in_rate, channels = int(f.samplerate), int(f.channels)
        resampler = _resampler(path, in_rate, channels, sr)
        block_frames = max(1, _BLOCK_VALUES // channels)
        done = 0  # input frames read so far
        while True:
            try:
                block = f.read(block_frames, dtype="float32", always_2d=True)
            except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, OverflowError) as exc:
                # the failing block is lost whole: FFmpeg decodes the file again past the `done` frames
                # already given, and on into the damage as far as it can
                yield from _iter_av_blocks(path, sr, exc, _Damage(path, strict, damage), skip=done,
                                           resampler=resampler, rate=in_rate)
                return
            except (OSError, MemoryError) as exc:
                raise AudioError(f"cannot read audio file {path}: {type(exc).__name__}: {exc}") from None
            last = block.shape[0] < block_frames
            if channels > 1:
                with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf samples: reported below
                    mono = block.mean(axis=1, dtype=np.float64).astype(np.float32)
            else:
                mono = np.ascontiguousarray(block[:, 0])
            out = _finish_block(path, mono, done, in_rate, resampler, last)
            done += block.shape[0]
            # nothing of the block is held while this generator waits at its yield (a window's decoding): the
            # block, its mono mix and the block given were part of the command's peak (docs/bench-results.md)
            held = [out] if out.size else []
            del block, mono, out
            if held:
                yield held.pop()
            if last:
                return


def _resampler(path: Path, in_rate: int, channels: int, sr: int):
    """The checked header facts; a soxr stream to `sr` Hz when the file's rate differs, else None."""
    if not MIN_FILE_RATE <= in_rate <= MAX_FILE_RATE:
        raise AudioError(
            f"{path}: declares a sample rate of {in_rate} Hz, outside the supported "
            f"{MIN_FILE_RATE}..{MAX_FILE_RATE} Hz (a corrupt header?)"
        )
    if channels < 1:
        raise AudioError(f"{path}: declares {channels} channels")
    if in_rate == sr:
        return None
    import soxr

    return soxr.ResampleStream(in_rate, sr, 1, dtype="float32", quality="HQ")


def _finish_block(path: Path, mono: np.ndarray, done: int, in_rate: int, resampler, last: bool) -> np.ndarray:
    """One block of mono samples, `done` input frames into the file: checked finite, then resampled."""
    finite = np.isfinite(mono)
    if not finite.all():
        first = done + int(np.flatnonzero(~finite)[0])
        raise AudioError(
            f"{path} contains NaN or Inf samples (first at {first / in_rate:.3f} s, frame {first}); "
            "the file is damaged"
        )
    if resampler is not None:
        mono = resampler.resample_chunk(mono, last=last)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _downmix(planes: np.ndarray) -> np.ndarray:
    """(channels, frames) float32 -> mono float32, channels averaged in float64."""
    if planes.shape[0] == 1:
        return np.ascontiguousarray(planes[0])
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf samples: reported by _finish_block
        return planes.mean(axis=0, dtype=np.float64).astype(np.float32)


def _iter_av_blocks(path: Path, sr: int, sndfile_error: BaseException, damage: _Damage, *, skip: int = 0,
                    resampler=None, rate: int | None = None):
    """`iter_file_blocks` by FFmpeg (PyAV): the first audio stream of any container, videos included,
    decoded packet by packet into blocks of about one second.  With ``skip`` it continues a libsndfile
    read that failed after ``skip`` frames at ``rate`` Hz (its `resampler` carries on); if FFmpeg cannot
    go on from there, the file ends where libsndfile stopped."""
    sndfile = f"libsndfile: {str(sndfile_error).strip() or type(sndfile_error).__name__}"
    resuming = rate is not None
    try:
        import av
    except ImportError:
        if not resuming:
            raise _open_error(path, sndfile_error) from None
        yield from _flush(path, resampler, skip, rate)
        return damage.stopped(skip, rate, sndfile)
    errors = (av.error.FFmpegError, ValueError, TypeError, RuntimeError, OverflowError)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except errors as exc:
        if resuming:
            yield from _flush(path, resampler, skip, rate)
            return damage.stopped(skip, rate, f"{sndfile}; FFmpeg: {_av_reason(exc)}")
        raise AudioError(f"{path} is not a readable audio file ({sndfile}; FFmpeg: {_av_reason(exc)})") from None
    except OSError as exc:
        raise AudioError(f"cannot read audio file {path}: {exc}") from None
    with container:
        if not container.streams.audio:
            held = ", ".join(f"{len(v)} {k}" for k, v in (("video", container.streams.video),
                                                          ("subtitle", container.streams.subtitles),
                                                          ("data", container.streams.data)) if len(v)) or "no streams"
            raise AudioError(f"{path} has no audio stream (it holds {held}): nothing to transcribe")
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        if ctx is None:
            raise AudioError(f"{path}: FFmpeg has no decoder for its audio stream")
        in_rate, channels = int(ctx.sample_rate or 0), int(ctx.channels or 0)
        if resuming and in_rate != rate:  # not the stream libsndfile read: end where it stopped
            yield from _flush(path, resampler, skip, rate)
            return damage.stopped(skip, rate, sndfile)
        if not resuming:
            resampler = _resampler(path, in_rate, channels, sr)
        to_planar = av.AudioResampler(format="fltp")  # any sample format -> float32 planes, rate and layout kept
        pending: list[np.ndarray] = []
        n_pending, done, skipped = 0, skip, 0
        try:
            for frame in container.decode(stream):
                if frame.sample_rate != in_rate:
                    raise AudioError(f"{path}: the sample rate changes from {in_rate} to {frame.sample_rate} Hz "
                                     f"at {(done + n_pending) / in_rate:.3f} s; not supported")
                for f in to_planar.resample(frame):
                    mono = _downmix(f.to_ndarray())
                    if skipped < skip:  # what libsndfile gave already
                        drop = min(skip - skipped, mono.size)
                        skipped += drop
                        mono = mono[drop:]
                    pending.append(mono)
                    n_pending += mono.size
                if n_pending >= in_rate:  # about a second: one check and one resampler call per block
                    block = np.concatenate(pending)
                    out = _finish_block(path, block, done, in_rate, resampler, False)
                    done += block.size
                    pending, n_pending = [], 0
                    if out.size:
                        yield out
        except errors as exc:
            why = f"FFmpeg: {_av_reason(exc)}"
            yield from _flush(path, resampler, done, in_rate, pending)
            return damage.stopped(done + n_pending, in_rate, f"{sndfile}; {why}" if resuming else why)
        yield from _flush(path, resampler, done, in_rate, pending)
        if resuming:  # FFmpeg read past where libsndfile failed: all of it is kept, and the damage said
            damage.stopped(done + n_pending, in_rate, f"{sndfile} at {skip / in_rate:.3f} s; FFmpeg decoded on to the end")


def _flush(path: Path, resampler, done: int, rate: int, pending: list | None = None):
    """The last block: what is pending, and the resampler's tail."""
    block = np.concatenate(pending) if pending else np.zeros(0, np.float32)
    out = _finish_block(path, block, done, rate, resampler, True)
    if out.size:
        yield out


def _av_reason(exc: BaseException) -> str:
    return (getattr(exc, "strerror", None) or str(exc)).strip() or type(exc).__name__


@contextlib.contextmanager
def as_file(source):
    """A path for `source`: bytes, or a binary file object (an upload, a socket's file, sys.stdin.buffer), copied
    a MiB at a time into a temporary file that is removed on exit, since a transcription reads its audio
    more than once; a path or an array as it is."""
    if not (isinstance(source, (bytes, bytearray, memoryview)) or hasattr(source, "read")):
        yield source
        return
    import shutil
    import tempfile
    with tempfile.NamedTemporaryFile(prefix="whisperkit-audio-") as tmp:
        try:
            if hasattr(source, "read"):
                shutil.copyfileobj(source, tmp, 1 << 20)
            else:
                tmp.write(source)
        except (TypeError, UnicodeDecodeError):  # a text-mode file: str chunks, or bytes that are not text
            raise AudioError(f"an audio file object must be opened in binary mode ('rb'), got {source!r}") from None
        except OSError as exc:
            raise AudioError(f"cannot read the audio file object {source!r}: {exc}") from None
        tmp.flush()
        yield tmp.name


def _check_path(source) -> Path:
    if not isinstance(source, (str, os.PathLike)):
        raise AudioError(
            f"audio source must be a file path, bytes, a binary file object or a NumPy array, got {type(source).__name__}"
        )
    path = Path(source)
    try:
        if not path.exists():
            raise AudioError(f"audio file not found: {path}")
        if path.is_dir():
            raise AudioError(f"audio path is a directory, not a file: {path}")
        size = path.stat().st_size
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise AudioError(f"cannot access audio file {path}: {exc}") from None
    if size == 0:
        raise AudioError(f"audio file is empty (0 bytes): {path}")
    return path


def load_audio(source: AudioSource, sr: int = SAMPLE_RATE, *, strict: bool = False, damage: list | None = None) -> np.ndarray:
    """Return mono float32 samples at ``sr`` Hz (16 kHz by default).

    ``source`` is a path to an audio file (libsndfile's formats, and whatever FFmpeg reads through
    PyAV), its bytes, a binary file object, or a 1-D NumPy array that is already mono at 16 kHz (it is only converted to float32 and checked).
    Integer PCM and 8-bit unsigned files come out scaled to [-1, 1]; several channels are averaged;
    NaN/Inf samples, a sample rate outside [MIN_FILE_RATE, MAX_FILE_RATE] Hz, an unreadable or
    sample-less file are an :class:`AudioError` naming the file; a file damaged part-way gives its
    readable part, as :func:`iter_file_blocks` says (``strict``, ``damage``).
    """
    if isinstance(source, np.ndarray):
        return _check_array(source)
    with as_file(source) as source:
        path = _check_path(source)
        blocks = list(iter_file_blocks(path, sr, strict=strict, damage=damage))
    if not blocks:
        raise AudioError(f"audio file contains no samples: {path}")
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


# --------------------------------------------------------------------------------------------
# mel filterbank (Slaney-style, as librosa.filters.mel with its defaults)

_F_SP = 200.0 / 3  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15.0
_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(freqs: np.ndarray) -> np.ndarray:
    freqs = np.asanyarray(freqs, dtype=np.float64)
    mels = freqs / _F_SP
    log_part = freqs >= _MIN_LOG_HZ
    mels = np.where(
        log_part,
        _MIN_LOG_MEL + np.log(np.maximum(freqs, 1e-300) / _MIN_LOG_HZ) / _LOGSTEP,
        mels,
    )
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asanyarray(mels, dtype=np.float64)
    freqs = _F_SP * mels
    log_part = mels >= _MIN_LOG_MEL
    return np.where(log_part, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels - _MIN_LOG_MEL)), freqs)


@functools.lru_cache(maxsize=None)
def _mel_filters_cached(n_mels: int, sr: int, n_fft: int) -> np.ndarray:
    n_bins = 1 + n_fft // 2
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    min_mel = _hz_to_mel(0.0)
    max_mel = _hz_to_mel(sr / 2.0)
    mel_f = _mel_to_hz(np.linspace(min_mel, max_mel, n_mels + 2))  # band edges in Hz

    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)

    # Slaney normalisation: each triangle has unit area in Hz
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights = (weights * enorm[:, None]).astype(np.float32)
    assert weights.shape == (n_mels, n_bins)
    weights.setflags(write=False)
    return weights


def mel_filters(n_mels: int, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """The (n_mels, 1 + n_fft // 2) float32 Slaney mel filterbank (htk=False, norm="slaney",
    fmin=0, fmax=sr/2), identical to ``librosa.filters.mel`` with its defaults. Cached; the
    returned array is read-only."""
    if int(n_mels) <= 0:
        raise ValueError(f"n_mels must be positive, got {n_mels}")
    return _mel_filters_cached(int(n_mels), int(sr), int(n_fft))


# --------------------------------------------------------------------------------------------
# STFT and log-mel


@functools.lru_cache(maxsize=None)
def _periodic_hann(n: int) -> np.ndarray:
    k = np.arange(n, dtype=np.float64)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * k / n)
    w.setflags(write=False)
    return w


def _power_spectrum(audio: np.ndarray, n_fft: int = N_FFT, hop: int = HOP_LENGTH) -> np.ndarray:
    """|STFT|^2 with a periodic Hann window, centred with reflect padding, last frame dropped.
    Returns (1 + n_fft // 2, n_frames) float64."""
    x = np.asarray(audio)
    x = x if x.dtype == np.float32 else x.astype(np.float64)  # float32 samples are widened block by block, below
    half = n_fft // 2
    if x.size <= half:
        # reflect padding needs more than n_fft//2 samples; zero-extend like a silent tail
        x = np.pad(x, (0, half + 1 - x.size))
    x = np.pad(x, (half, half), mode="reflect")
    n_frames = 1 + (x.size - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(
        x, shape=(n_frames, n_fft), strides=(x.strides[0] * hop, x.strides[0]), writeable=False
    )
    # By blocks of frames: the whole float64 STFT of a 30 s window with its temporaries peaked at ~33 MiB; a row's
    # transform does not depend on the rows beside it, so the values are the same
    window = _periodic_hann(n_fft)
    power = np.empty((n_frames - 1, n_fft // 2 + 1))  # openai drops the last frame
    for a in range(0, n_frames - 1, _STFT_BLOCK):
        b = min(a + _STFT_BLOCK, n_frames - 1)
        spec = np.fft.rfft(frames[a:b].astype(np.float64) * window, axis=-1)
        np.add(spec.real**2, spec.imag**2, out=power[a:b])
    return power.T


_STFT_BLOCK = 512  # frames per block of _power_spectrum: ~1.6 MB of float64 frames


def log_mel_spectrogram(
    audio: AudioSource, n_mels: int = 80, padding: int = 0
) -> np.ndarray:
    """Whisper's log-mel spectrogram, (n_mels, n_frames) float32.

    ``audio`` is a path or a 1-D array of 16 kHz samples; ``padding`` zeros are appended first.
    """
    samples = load_audio(audio)
    if padding > 0:
        samples = np.pad(samples, (0, int(padding)))
    power = _power_spectrum(samples)
    filters = mel_filters(n_mels).astype(np.float64)
    log_spec = filters @ power  # mel power, float64; the steps below in place
    np.log10(np.maximum(log_spec, 1e-10, out=log_spec), out=log_spec)
    np.maximum(log_spec, log_spec.max() - 8.0, out=log_spec)
    log_spec += 4.0
    log_spec /= 4.0
    return log_spec.astype(np.float32)


def pad_or_trim(array: np.ndarray, length: int = N_SAMPLES, *, axis: int = -1) -> np.ndarray:
    """Pad with zeros or trim ``array`` along ``axis`` to ``length`` (the encoder expects
    N_SAMPLES samples or N_FRAMES mel frames)."""
    array = np.asarray(array)
    n = array.shape[axis]
    if n > length:
        array = array.take(indices=range(length), axis=axis)
    if array.shape[axis] < length:
        pad_widths = [(0, 0)] * array.ndim
        pad_widths[axis] = (0, length - array.shape[axis])
        array = np.pad(array, pad_widths)
    return array
