"""Command line: ``python -m featx.extract DATA_DIR``.

Embeds every image of a data folder with a frozen TF Hub model and caches the
embeddings in HDF5. Re-running embeds only what the cache lacks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from featx import _cli
from featx._text import count
from featx.config import DEFAULT_BATCH_SIZE, DEFAULT_CACHE_PATH, DEFAULT_MODEL_HANDLE, DEVICES, ExtractConfig
from featx.pipeline import extract_features

logger = logging.getLogger("featx.extract")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m featx.extract",
        description="Embed the images of DATA_DIR with a frozen TF Hub model and cache "
        "the embeddings in HDF5. Only images the cache lacks are embedded.",
    )
    parser.add_argument(
        "data_dir", type=Path, metavar="DATA_DIR",
        help="Folder laid out as <class>/<file> or <split>/<class>/<file>, "
        "split being train, val, validation or test.",
    )
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE_PATH,
        help="HDF5 cache file to create or complete (default: %(default)s).",
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL_HANDLE,
        help="TF Hub handle or local SavedModel folder of an image feature-vector "
        "model taking 224x224 RGB in [0, 1] (default: %(default)s).",
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
        help="Images per model call (default: %(default)s).",
    )
    parser.add_argument(
        "--workers", type=int, default=None,
        help="Threads that read and decode images (default: one per CPU core, at least 2).",
    )
    parser.add_argument(
        "--device", choices=DEVICES, default="auto",
        help="Where the model runs; auto uses a GPU when TensorFlow detects one (default: auto).",
    )
    parser.add_argument(
        "--mixed-precision", action="store_true",
        help="On a GPU, let TensorFlow run float16 kernels; no effect on a CPU.",
    )
    parser.add_argument(
        "--rebuild", action="store_true",
        help="Rename an existing cache to <cache>.bak-<timestamp> and embed everything again.",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="Do not show the progress bar.",
    )
    parser.add_argument(
        "--summary-json", type=Path, default=None, metavar="PATH",
        help="Also write the run's counts, skipped files and timings (seconds) to "
        "this JSON file, for scripts.",
    )
    _cli.add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _cli.configure_logging(args)

    def body() -> int:
        config = ExtractConfig(
            data_dir=args.data_dir, cache_path=args.cache, model_handle=args.model,
            batch_size=args.batch_size, workers=args.workers, device=args.device,
            mixed_precision=args.mixed_precision, rebuild=args.rebuild,
        )
        summary = extract_features(config, progress=not (args.no_progress or args.quiet))
        if summary.n_missing:
            logger.warning(
                "%d cached images are no longer in %s; they stay in the cache, "
                "marked missing, and fit leaves them out", summary.n_missing, args.data_dir,
            )
        rate = ""
        if summary.n_embedded + summary.n_reused:
            loading = ", model loading included" if summary.model_loaded else ""
            rate = f" ({summary.images_per_second:.1f} images/s{loading})"
        logger.info(
            "Done: %s, %s, %d embedded, %d copied by content hash, "
            "%d already cached, %d skipped, in %.1f s%s",
            count(summary.n_images, "image"), count(len(summary.class_names), "class"), summary.n_embedded,
            summary.n_reused, summary.n_cached, len(summary.skipped), summary.seconds, rate,
        )
        if summary.skipped:
            logger.warning(
                "Skipped %s, listed in the cache: %s", count(len(summary.skipped), "file"),
                "; ".join(f"{path} ({reason})" for path, reason in summary.skipped[:10])
                + ("; ..." if len(summary.skipped) > 10 else ""),
            )
        if args.summary_json is not None:
            write_summary_json(summary, args.summary_json)
        if summary.n_ok == 0:
            logger.error("None of the %d images could be read, so no cache was written. "
                         "Check the skipped files and their reasons above", summary.n_images)
            return 1
        logger.info("Cache: %s", summary.cache_path)
        return 0

    return _cli.run(body)


def write_summary_json(summary, path: Path) -> None:
    """Write an ExtractSummary as JSON, with the derived counts and rate."""
    import dataclasses
    import json

    record = dataclasses.asdict(summary)
    record["cache_path"] = str(summary.cache_path)
    record["skipped"] = [{"path": p, "reason": r} for p, r in summary.skipped]
    record["n_ok"] = summary.n_ok
    record["images_per_second"] = summary.images_per_second
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
