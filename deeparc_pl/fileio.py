"""Atomic, non-clobbering file writes: nothing the user has is ever overwritten by accident."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = ["atomic_write", "write_json", "write_text", "check_writable", "refuse_existing", "json_safe"]


def check_writable(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse to replace an existing file unless ``overwrite``; create the parent folder."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def refuse_existing(paths: Iterable[str | os.PathLike], overwrite: bool = False,
                    hint: str = "pass overwrite=True (CLI: --overwrite) to replace them") -> None:
    """Fail BEFORE any work when an output file already exists (naming every one), unless ``overwrite``."""
    if overwrite:
        return
    taken = [str(p) for p in paths if Path(p).exists()]
    if taken:
        raise FileExistsError(f"{', '.join(taken)} already exist{'s' if len(taken) == 1 else ''}; {hint}")


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None], overwrite: bool = False) -> Path:
    """Call ``writer(tmp_path)`` on a temporary file next to ``path``, then move it into place."""
    path = check_writable(path, overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions of a new file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    def w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, w, overwrite)


def json_safe(obj: Any) -> Any:
    """NaN and infinities become None (JSON has no such numbers); tuples become lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any, overwrite: bool = False) -> Path:
    """Standard JSON: NaN and infinities (not JSON) are written as ``null``."""
    return write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n", overwrite)
