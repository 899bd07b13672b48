"""`python -m genart [overrides]`: compose the config with Hydra and render (see README)."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from genart.errors import UserError


@hydra.main(config_path="pkg://conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from genart.app import run_job  # heavy imports wait until a job really runs

    return run_job(cfg)


def cli() -> None:
    from genart.run_dirs import claim_run_dir, pin_override, release_if_unused

    try:
        from genart.cli import before_hydra

        before_hydra(sys.argv[1:])
        run_dir = claim_run_dir(sys.argv[1:])  # before Hydra, which would share a dir by the second
    except UserError as err:
        print(f"genart: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if run_dir is not None:
        sys.argv.insert(1, pin_override(run_dir, sys.argv[1:]))
    try:
        main()  # a sweep with a failed job exits 1 from its summary (genart.tools.sweep_summary)
    finally:
        release_if_unused(run_dir)


if __name__ == "__main__":
    cli()
