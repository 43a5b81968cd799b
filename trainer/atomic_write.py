"""Writing a file that others read: whole or not at all, and readable as the umask says (torch-free).

``write_atomic(path, data)`` writes the bytes under a temporary name in the same directory and renames them into
place (``os.replace``), so a reader never sees half a file and a crash leaves the old file (or none). The file is
created by ``open()``, so it gets the mode any new file gets, 0o666 & ~umask: 0o644 under the usual 0o022, 0o600
under 0o077. A writer that goes through a private temporary file of its own leaves 0o600 whatever the umask
(``tempfile.mkstemp``, and safetensors' ``save_file`` since 0.8: safetensors issue #782), and teammates sharing a
cluster could not read the export or the codes; serialize to bytes and write them here instead.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, with the mode ``open()`` gives a new file (module docstring)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
