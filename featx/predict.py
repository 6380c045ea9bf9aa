"""Command line: ``python -m featx.predict --head runs/mlp/head.joblib IMAGE_OR_DIR ...``.

Labels new images with a head saved by ``featx.fit`` and writes CSV: path,
predicted label, one probability column per class, and an error column.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

from featx import _cli
from featx._text import count
from featx.config import DEFAULT_BATCH_SIZE, DEVICES

logger = logging.getLogger("featx.predict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m featx.predict",
        description="Label images with a head fitted by featx.fit and write CSV.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR",
                        help="Image files, or folders searched recursively for images.")
    parser.add_argument("--head", type=Path, required=True,
                        help="head.joblib written by featx.fit, or the run folder that contains it.")
    parser.add_argument("--cache", type=Path, default=None,
                        help="Cache whose embeddings are reused for images it contains (matched by SHA-256).")
    parser.add_argument("--out", type=Path, default=None,
                        help="CSV file to write (default: standard output).")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="Images per model call (default: %(default)s).")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="Where the model runs (default: auto).")
    _cli.add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _cli.configure_logging(args)

    def body() -> int:
        from featx.cache import load_cache
        from featx.errors import check_positive_int
        from featx.prediction import list_image_paths, load_head, predict_images

        check_positive_int(args.batch_size, "--batch-size")
        bundle = load_head(args.head)
        paths = list_image_paths(args.inputs)
        cache = load_cache(args.cache) if args.cache is not None else None

        def make_embedder():
            from featx.embed import HubEmbedder

            return HubEmbedder(bundle["model_handle"], device=args.device,
                               input_size=bundle["input_size"])

        results = predict_images(bundle, paths, make_embedder, cache, args.batch_size)
        columns = ["path", "label", *bundle["label_names"], "error"]
        handle = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout
        try:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(results)
        finally:
            if args.out:
                handle.close()
        n_errors = sum(1 for r in results if r["error"])
        logger.info("Predicted %s, %d could not be read%s", count(len(results) - n_errors, "image"), n_errors,
                    f"; wrote {args.out}" if args.out else "")
        return 0

    return _cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
