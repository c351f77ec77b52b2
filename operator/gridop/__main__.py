"""The one wiring point: `gridop operator | crds`."""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys


def _operator(args: argparse.Namespace) -> int:
    from .logs import setup_logging
    from .operator_main import LeadershipLost, run_operator
    from .settings import Settings

    settings = Settings()
    if args.namespace:
        settings.watch_namespaces = list(args.namespace)
    setup_logging(settings.log_format, settings.log_level)
    try:
        asyncio.run(run_operator(settings))
    except LeadershipLost as exc:
        print(f"gridop operator: {exc}; exiting to restart as a standby", file=sys.stderr)
        return 1
    return 0


def _crds(args: argparse.Namespace) -> int:
    from .api import crdgen

    for path in crdgen.write(pathlib.Path(args.output)):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gridop", description="gridop: a Kubernetes operator that turns a cluster into a grid.")
    sub = parser.add_subparsers(dest="command", required=True)

    op = sub.add_parser("operator", help="run the operator (kopf) against the current cluster")
    op.add_argument("-n", "--namespace", action="append", help="watch only this namespace (repeatable); default: all")
    op.set_defaults(func=_operator)

    crds = sub.add_parser("crds", help="write the CustomResourceDefinitions generated from the API models")
    crds.add_argument("--output", "-o", default="crds", help="directory to write into (default: crds)")
    crds.set_defaults(func=_crds)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
