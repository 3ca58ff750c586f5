"""Command-line entry: ``python -m monai_breastlt <command>``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from monai_breastlt import __version__
from monai_breastlt.utils import bad_input_message
from monai_breastlt.cli import bench as bench_cmds
from monai_breastlt.cli import data as data_cmds
from monai_breastlt.cli import demo as demo_cmds
from monai_breastlt.cli import shortcuts as shortcuts_cmds
from monai_breastlt.cli import synthesis as synthesis_cmds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m monai_breastlt",
        description="Long-tailed breast-ultrasound lesion subtyping with MONAI: phantom data, "
        "class+sketch latent diffusion synthesis, RL-driven synthetic/real ratio sampling.",
    )
    parser.add_argument("--version", action="version", version=f"monai-breastlt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    data_cmds.add_parsers(sub)
    synthesis_cmds.add_parsers(sub)
    demo_cmds.add_parsers(sub)
    shortcuts_cmds.add_parsers(sub)
    bench_cmds.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        message = bad_input_message(e)  # a bundle run wraps the informative error in "Failed to evaluate ..."
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)  # bad input: one clear line, no traceback
        return 2
