"""Command line: ``python -m featx.audit``.

Checks a cache for duplicated images (within and across splits) and for a
metadata shortcut, and writes ``audit.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from featx import _cli
from featx.config import DEFAULT_CACHE_PATH, DEFAULT_RUNS_DIR

logger = logging.getLogger("featx.audit")


def build_parser() -> argparse.ArgumentParser:
    from featx.auditing import DEFAULT_NEAR_DUPLICATE_THRESHOLD

    parser = argparse.ArgumentParser(
        prog="python -m featx.audit",
        description="Find exact and near-duplicate images and test whether file "
        "metadata alone predicts the labels.",
    )
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE_PATH,
                        help="HDF5 cache written by featx.extract (default: %(default)s).")
    parser.add_argument("--out", type=Path, default=DEFAULT_RUNS_DIR / "audit",
                        help="Folder for audit.json (default: %(default)s).")
    parser.add_argument("--threshold", type=float, default=DEFAULT_NEAR_DUPLICATE_THRESHOLD,
                        help="Cosine similarity of embeddings above which two files are "
                        "near-duplicates, in (0, 1] (default: %(default)s).")
    parser.add_argument("--folds", type=int, default=5,
                        help="Cross-validation folds of the baselines (default: %(default)s).")
    parser.add_argument("--random-state", type=int, default=0,
                        help="Seed of the baselines and folds (default: %(default)s).")
    _cli.add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _cli.configure_logging(args)

    def body() -> int:
        from featx.auditing import format_audit_summary, run_audit
        from featx.cache import load_cache
        from featx.errors import FeatxError

        if not 0 < args.threshold <= 1:
            raise FeatxError("Invalid value", "--threshold", expected="a number in (0, 1]",
                             got=args.threshold)
        _cli.make_output_folder(args.out, "--out")
        cache = load_cache(args.cache)
        audit = run_audit(cache, args.threshold, args.folds, args.random_state)
        print(format_audit_summary(audit), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "audit.json"
        path.write_text(json.dumps(audit, indent=2) + "\n", encoding="utf-8")
        logger.info("Wrote %s", path)
        return 0

    return _cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
