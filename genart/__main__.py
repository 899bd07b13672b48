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
    try:
        from genart.cli import before_hydra

        before_hydra(sys.argv[1:])
    except UserError as err:
        print(f"genart: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    main()
    from genart.cli import after_hydra

    after_hydra()


if __name__ == "__main__":
    cli()
