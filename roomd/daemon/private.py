"""Files in state_dir are private (STANDARD §5: sign-in records are internal, the attendee list
"very high" confidentiality): folders 0700, files 0600, whatever the umask of whoever started
roomd (systemd sets 0077; a shell usually 0022)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(PermissionError):  # not ours (e.g. a shared read-only mount)
        os.chmod(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """Create `path` 0600 if absent, or narrow it to 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    with contextlib.suppress(PermissionError):
        os.chmod(path, 0o600)
    return path


def write_private(path: Path, data: str) -> None:
    """Write text atomically (temp file + rename) with mode 0600."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(data)
    os.replace(tmp, path)
