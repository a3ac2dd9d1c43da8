"""Writing an input's outputs so that a reader never sees half of one: every format is written into a temporary
directory beside its final place, flushed to disk, then renamed into place (a rename within one filesystem is
atomic), the JSON last.  A worker killed mid-write leaves only its temporary directory, which the driver removes
at the end of the job; the rerun of the input (Ray's task retry) writes the same names again.
Nothing here imports Ray."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

from ..writers import get_writer
from .plan import MANIFEST_NAME, TMP_PREFIX, Item


def write_outputs(result: dict, item: Item, output_dir: str, formats: tuple[str, ...], writer_options: dict) -> None:
    """`result` (TranscriptionResult.to_dict()) as each of `formats` (json last) at ``item.output(output_dir, fmt)``."""
    final_dir = os.path.dirname(item.output(output_dir))
    os.makedirs(final_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=final_dir)
    try:
        name = os.path.basename(item.source)  # the writers name a file after the input, less its extension
        written = []
        for fmt in formats:
            path = get_writer(fmt, tmp)(result, name, **writer_options)
            _fsync(path)
            written.append(path)
        for path in written:  # in the order of `formats`: the JSON, which marks the input complete, comes last
            os.replace(path, os.path.join(final_dir, os.path.basename(path)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomically(path: str, data) -> None:
    """`data` as JSON at `path`, by a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_leftovers(output_dir: str) -> int:
    """Remove the temporary files and directories that killed workers left under `output_dir`; their count.
    Called when no worker of the job is writing any more."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(output_dir):
        for name in [d for d in dirnames if d.startswith(TMP_PREFIX)]:
            shutil.rmtree(os.path.join(dirpath, name), ignore_errors=True)
            dirnames.remove(name)
            removed += 1
        for name in filenames:
            if name.startswith(TMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):  # another cleaner was first
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    return removed


def manifest_path(output_dir: str) -> str:
    return os.path.join(output_dir, MANIFEST_NAME)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
