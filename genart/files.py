"""Files a run writes and reads back: atomic writes that say "disk full", untrusted loads that run no code."""

from __future__ import annotations

import errno
import warnings
from collections.abc import Callable
from pathlib import Path

from genart.errors import UserError

FULL = (errno.ENOSPC, errno.EDQUOT)


def write_atomic(path: Path, write: Callable[[Path], None], suffix: str = ".part") -> None:
    """`replace_atomic`, with a full disk turned into one paragraph (`raise_if_disk_full`)."""
    try:
        replace_atomic(path, write, suffix)
    except OSError as err:
        raise_if_disk_full(err, Path(path))
        raise


def replace_atomic(path: Path, write: Callable[[Path], None], suffix: str = ".part") -> None:
    """write(tmp) then rename over `path`: a kill leaves the old file; a failure leaves no .part."""
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def raise_if_disk_full(err: BaseException, path: Path) -> None:
    """A full disk (or quota) as one paragraph: which file, what to free, how to go on."""
    if isinstance(err, OSError) and err.errno in FULL:
        run_dir = path.parent.parent if path.parent.name in ("stats", "frames") else path.parent
        raise UserError(
            f"The disk is full: genart could not write {path} ({err.strerror or 'no space left'}). "
            f"Free some space on that disk; then `python -m genart resume={run_dir}` continues the "
            "run from its last checkpoint.pt (left intact), or start a new run."
        ) from None


def load_untrusted(path: Path, what: str):
    """torch.load a file a user may have swapped: weights_only (no code runs); any failure is a UserError."""
    import torch

    try:
        with warnings.catch_warnings():  # torch's advice on pickle protocols is not for our users
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds, and its text advises unsafe loads
        raise unreadable(path, what, reason_for(err)) from None


def reason_for(err: Exception) -> str:
    """Our own words for why torch could not read a file (never torch's text)."""
    if isinstance(err, OSError):
        return err.strerror or "it cannot be read"
    if "weights only" in str(err).lower() or "unpickl" in type(err).__name__.lower():
        return "it holds objects other than tensors and plain values, which genart never writes"
    return "it is truncated, corrupt or not a file torch wrote"


def unreadable(path: Path, what: str, reason: str) -> UserError:
    """The one paragraph for a checkpoint or stats file genart cannot use."""
    run_dir = path.parent.parent if path.parent.name == "stats" else path.parent
    return UserError(
        f"{path} is not a {what} genart can resume from: {reason}. It may be damaged or may not "
        f"come from this run; genart loads it without running any code in it. Restore the file "
        f"from a copy of {run_dir}, or start a new run (without resume=)."
    )
