"""Command line: ``python -m featx.fit --head mlp``.

Fits a scikit-learn head on a cache written by ``featx.extract``, prints the
confusion matrix and metrics, and saves them with the fitted head.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from featx import _cli
from featx._text import count
from featx.config import DEFAULT_CACHE_PATH, DEFAULT_RUNS_DIR

logger = logging.getLogger("featx.fit")


def build_parser() -> argparse.ArgumentParser:
    from featx.heads import HEADS

    parser = argparse.ArgumentParser(
        prog="python -m featx.fit",
        description="Fit a classifier head on cached features and report test "
        "and cross-validation metrics.",
    )
    parser.add_argument(
        "--head", required=True, choices=[*HEADS, "all"],
        help="; ".join(f"{h.name}: {h.description}" for h in HEADS.values())
        + "; all: every head on the same folds, with a comparison table.",
    )
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE_PATH,
        help="HDF5 cache written by featx.extract (default: %(default)s).",
    )
    parser.add_argument(
        "--out", type=Path, default=None,
        help="Folder for metrics.json, confusion_matrix.png, head.joblib and report.md "
        f"(default: {DEFAULT_RUNS_DIR}/<head>); with --head all, one subfolder per head "
        "plus comparison.json and comparison.md.",
    )
    parser.add_argument(
        "--exclude-leaked", action="store_true",
        help="Also score the test split without the images that duplicate (exactly or "
        "nearly) a training image, and report both figures.",
    )
    parser.add_argument(
        "--threshold", type=float, default=None,
        help="Cosine similarity above which two images are near-duplicates "
        "(default: the audit's, 0.95).",
    )
    parser.add_argument(
        "--folds", type=int, default=5,
        help="Cross-validation folds, at least 2 (default: %(default)s).",
    )
    parser.add_argument(
        "--random-state", type=int, default=0,
        help="Seed of the head and of the fold assignment (default: %(default)s).",
    )
    parser.add_argument(
        "--include-missing", action="store_true",
        help="Also use cached images whose files were gone at the last extract run.",
    )
    _cli.add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _cli.configure_logging(args)
    logging.captureWarnings(True)

    def body() -> int:
        import json
        import shlex

        from featx.auditing import DEFAULT_NEAR_DUPLICATE_THRESHOLD, find_duplicates, run_audit
        from featx.cache import load_cache
        from featx.errors import FeatxError
        from featx.evaluation import evaluate_head
        from featx.heads import HEADS, get_head
        from featx.reporting import (
            comparison_rows,
            format_comparison_markdown,
            format_report,
            save_outputs,
            write_report,
        )

        if args.folds < 2:
            raise FeatxError("Invalid value", "--folds", expected="an integer of at least 2", got=args.folds)
        if args.random_state < 0:
            raise FeatxError("Invalid value", "--random-state", expected="an integer of at least 0",
                             got=args.random_state)
        threshold = DEFAULT_NEAR_DUPLICATE_THRESHOLD if args.threshold is None else args.threshold
        if not 0 < threshold <= 1:
            raise FeatxError("Invalid value", "--threshold", expected="a number in (0, 1]", got=threshold)
        heads = list(HEADS.values()) if args.head == "all" else [get_head(args.head)]
        cache = load_cache(args.cache, include_missing=args.include_missing)
        logger.info(
            "Cache %s: %d images, classes %s, splits %s, model %s",
            args.cache, len(cache), ", ".join(cache.label_names),
            ", ".join(sorted(set(cache.splits))), cache.model_handle,
        )
        if cache.missing:
            logger.warning(
                "Left out %d cached images whose files were gone at the last extract "
                "run (--include-missing keeps them)", len(cache.missing),
            )
        if cache.skipped:
            logger.warning("The last extract run skipped %s that could not be decoded",
                           count(len(cache.skipped), "file"))

        duplicates = find_duplicates(cache, threshold)
        out_dir = args.out if args.out is not None else DEFAULT_RUNS_DIR / args.head
        _cli.make_output_folder(out_dir, "--out")
        evaluations = []
        for head in heads:
            try:
                evaluation = evaluate_head(cache, head, n_folds=args.folds, random_state=args.random_state,
                                           duplicates=duplicates, exclude_leaked=args.exclude_leaked)
            except ValueError as error:
                # scikit-learn rejects some data shapes per estimator (the svm
                # head's calibration needs 3 images of each class in a fold).
                if args.head != "all":
                    raise FeatxError("Cannot fit head", head.name, got=str(error),
                                     hint="Try another --head, or add images to the small classes.") from None
                logger.error("Head %s skipped: %s", head.name, error)
                continue
            print(format_report(evaluation), flush=True)
            head_dir = out_dir / head.name if args.head == "all" else out_dir
            written = save_outputs(evaluation, head_dir, cache)
            logger.info("Wrote %s", ", ".join(str(path) for path in written.values()))
            evaluations.append(evaluation)

        if args.head == "all":
            rows = comparison_rows(evaluations)
            table = format_comparison_markdown(rows)
            print("\n" + table, flush=True)
            (out_dir / "comparison.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
            (out_dir / "comparison.md").write_text(table + "\n", encoding="utf-8")
        audit = run_audit(cache, threshold, args.folds, args.random_state, duplicates=duplicates)
        command = "python -m featx.fit " + shlex.join(argv if argv is not None else sys.argv[1:])
        report = write_report(out_dir, evaluations, audit, command, cache)
        logger.info("Wrote %s", report)
        return 0

    return _cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
