"""Run directories: each run claims its own before Hydra makes it, so no two runs ever share one.

Hydra names the dir by the second (`outputs/<date>/<time>`) and reuses it if it exists: two runs
started in the same second wrote into one dir. `claim_run_dir` makes the dir with an exclusive
mkdir (`<time>-02`, `-03`… when another run holds `<time>`) and pins Hydra to it by an override,
so sweep jobs in other processes (joblib, Ray) see the same literal path.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from genart.errors import UserError

_NOW = re.compile(r"\$\{now:([^}]*)\}")
# flags after which Hydra prints or completes and runs no job; -cn/-cp pick another primary config
_NO_CLAIM = frozenset(
    {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--version"}
    | {"--shell-completion", "-sc", "--config-name", "-cn", "--config-path", "-cp"}
)


def dir_key(argv: list[str]) -> str:
    """The key Hydra makes this command's dir from: hydra.sweep.dir with -m, else hydra.run.dir."""
    from genart.overrides import is_multirun

    return "hydra.sweep.dir" if is_multirun(argv) else "hydra.run.dir"


def dir_setting(argv: list[str]) -> tuple[str, str | None, bool]:
    """(key, its value, whether the command line set it): the command line's last override of
    the key, else conf/config.yaml's (no preset may touch `hydra.`)."""
    from genart.safety import OVERRIDE, read_main_config

    key = dir_key(argv)
    typed = [m[4].strip("'\"") for a in argv if (m := OVERRIDE.match(a)) and m[2] == key]
    if typed:
        return key, typed[-1], True
    return key, read_main_config().get("hydra", {}).get(key.split(".")[1], {}).get("dir"), False


def claim_run_dir(argv: list[str], now: datetime | None = None) -> Path | None:
    """Make this command's run (or sweep) dir from conf/config.yaml's pattern, taken by no other
    run; None when the command line names its own dir or will run nothing."""
    if any(a.split("=")[0] in _NO_CLAIM for a in argv):
        return None
    key, pattern, typed = dir_setting(argv)
    if typed:
        return None
    stamp = now or datetime.now()
    path = _NOW.sub(lambda m: stamp.strftime(m[1]), str(pattern or ""))
    if not path or "${" in path:  # another resolver: Hydra's own naming applies
        return None
    return claim_new(Path(path), key)


def claim_new(path: Path, key: str = "hydra.run.dir") -> Path:
    """`path`, or `path-02`, `-03`… : the first that this call creates (mkdir is atomic)."""
    for n in range(1, 10_000):
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n:02d}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
        except OSError as err:
            raise UserError(
                f"genart could not create the run directory {candidate} ({err.strerror}). Give a "
                f"directory you can write to, e.g. {key}=/tmp/genart/run1."
            ) from None
    raise UserError(f"{path} and 9998 numbered copies exist already; set {key}=… to a new dir.")


def pin_override(path: Path, argv: list[str]) -> str:
    """The Hydra override that puts this command's run (or sweep) in `path`."""
    from genart.overrides import quote

    return f"{dir_key(argv)}={quote(str(path))}"


def release_if_unused(path: Path | None) -> None:
    """Remove a claimed dir that Hydra never used (a composition error, a refused override)."""
    if path is None:
        return
    try:
        path.rmdir()  # only succeeds on an empty dir
    except OSError:
        pass


def sweep_job_dir(hydra_context, config, idx: int, overrides) -> Path:
    """Where sweep job `idx` with these overrides runs: its composed config's
    hydra.sweep.dir/subdir, resolved as Hydra's run_job resolves them (for a launcher or sweeper
    that must name the dir of a job it has not run, or that died)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    job = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(job):
        job.hydra.job.id, job.hydra.job.num = f"{job.hydra.job.name}_{idx}", idx
    before = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(job)
    try:
        return Path(str(job.hydra.sweep.dir)) / str(job.hydra.sweep.subdir)
    finally:
        if before is not None:
            HydraConfig.instance().set_config(before)
