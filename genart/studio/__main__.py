"""python -m genart.studio <sweep dir> [--port N] [--host H] [--token T]: the studio's web app."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genart.errors import UserError
from genart.studio.app import LOOPBACK, create_app
from genart.tools.sweep_dirs import job_dirs


def check_bind(host: str, token: str | None) -> None:
    """Loopback needs nothing; any other address needs --token (anyone there could reach it)."""
    if host.strip("[]").lower() not in LOOPBACK and not token:
        raise UserError(
            f"--host {host} would let other machines reach the studio, which can read your "
            "sweep dirs and record picks; bind it there only with --token <a long random "
            "secret> (every request must then carry it), or leave --host out to bind 127.0.0.1."
        )


def check_sweep(sweep_dir: Path) -> None:
    if not job_dirs(sweep_dir):
        raise UserError(
            f"{sweep_dir} has no numbered job folders (0, 1, 2… with final.png or result.json); "
            "give the studio a genart multirun sweep dir, e.g. outputs/multirun/<date>/<time>."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genart.studio", description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a genart multirun sweep dir")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    parser.add_argument("--token", help="required with any non-loopback --host")
    args = parser.parse_args(argv)
    try:
        check_bind(args.host, args.token)
        check_sweep(args.sweep_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    app = create_app(args.sweep_dir, host=args.host, port=args.port, token=args.token)
    query = f"?token={args.token}" if args.token else ""
    print(f"genart studio on http://{args.host}:{args.port}/{query}", flush=True)
    app.run(host=args.host, port=args.port, debug=False)  # never the debugger: it runs code
    return 0


if __name__ == "__main__":
    sys.exit(main())
