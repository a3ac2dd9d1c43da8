"""Cold start, run as a fresh process: ``python -m whisperkit.bench.cold ENGINE_SPEC AUDIO [--model M] [--threads N]``.

Times import, load and the first transcription inside the process, and prints one JSON line with them
and the peak resident set size of this process (VmHWM of /proc/self/status: unlike ru_maxrss it is not
inherited from the parent through fork/exec).  The parent times the whole process from outside.
"""
from __future__ import annotations

import json
import sys
import time

T0 = time.perf_counter()


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m whisperkit.bench.cold")
    ap.add_argument("engine")
    ap.add_argument("audio")
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ct2-dir", default=None, help="faster-whisper: the CTranslate2 directory (skips our weight loader)")
    args = ap.parse_args(argv)

    t = time.perf_counter()
    kind, _, name = args.engine.partition(":")
    from whisperkit.audio import load_audio
    from whisperkit.bench.engines import make_engine
    if kind == "backend":
        import whisperkit.api  # noqa: F401  (the graph, the registry and the backends' plugins)
        from whisperkit.registry import get_registry
        get_registry()
        if args.threads:
            from whisperkit.bench.machine import apply_threads
            apply_threads(args.threads)
    else:  # peers: the thread env vars set by the parent, then cpu_threads / torch.set_num_threads at load
        if name.startswith("faster-whisper"):
            import faster_whisper  # noqa: F401
        else:
            import torch  # noqa: F401
            import whisper  # noqa: F401
    t_import = time.perf_counter() - t

    t = time.perf_counter()
    if args.ct2_dir and name.startswith("faster-whisper"):
        from whisperkit.bench.engines import FasterWhisperEngine
        engine = FasterWhisperEngine("float32" if name.endswith("fp32") else "int8", args.threads or 1, None, args.ct2_dir)
    else:
        engine = make_engine(args.engine, args.threads or 1, args.model)
    engine.load()
    t_load = time.perf_counter() - t

    t = time.perf_counter()
    tokens = engine.transcribe(load_audio(args.audio))
    t_first = time.perf_counter() - t

    print(json.dumps({"import_s": t_import, "load_s": t_load, "first_s": t_first,
                      "inside_s": time.perf_counter() - T0, "peak_rss_mb": peak_rss_mb(), "n_tokens": len(tokens)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
