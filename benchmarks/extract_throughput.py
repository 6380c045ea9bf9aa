"""Measure the throughput of ``python -m featx.extract`` against two baselines.

One run measures, on the same images:

1. model only: the TF Hub model on pre-decoded batches held in memory;
2. featx extract as a whole process on a fresh cache, with the wall time of
   the same command on a one-image folder subtracted (process start-up and
   model loading);
3. a naive loop: ``cv2.imread`` at full resolution, ``cv2.resize`` to 224x224
   with ``INTER_AREA``, BGR to RGB, batches, then the same model object as in 1;
4. a re-run of featx extract on the cache written by 2, start-up included.

Each measurement is repeated (``--repeats``, 3 by default) and the fastest
run is reported, because noise from other processes only ever adds time.
Progress goes to stderr. The machine line and the results go to stdout, as a
Markdown table. Usage and how to read the numbers: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from featx import __version__ as featx_version
from featx.config import DEFAULT_BATCH_SIZE, DEFAULT_MODEL_HANDLE, INPUT_SIZE, default_workers, usable_cores
from featx.dataset import ImageFile, find_images
from featx.decode import decode_image
from featx.errors import FeatxError

DATA_DIR_VARIABLE = "FEATX_DATA_DIR"

SYNTHETIC_SIZE = 2048
SYNTHETIC_CLASSES = ("class_a", "class_b")
SYNTHETIC_JPEG_QUALITY = 85

# Runs one command and writes its wall time and peak resident memory as JSON.
# It is a small separate Python process because, on Linux, a child's
# ru_maxrss also counts the memory of the process that forked it, up to the
# exec. Measured from this script, it would include the model loaded here.
# NOTE: the peak therefore has this launcher's own resident memory, about
# 12 MiB with Python 3.11 on Linux, as a floor.
_LAUNCHER = """
import json, resource, subprocess, sys, time
result_path, command = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
status = subprocess.call(command)
wall_s = time.perf_counter() - started
max_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
max_rss_bytes = max_rss if sys.platform == "darwin" else max_rss * 1024
with open(result_path, "w") as handle:
    json.dump({"status": status, "wall_s": wall_s, "max_rss_bytes": max_rss_bytes}, handle)
"""


@dataclasses.dataclass
class ProcessResult:
    """Wall time and peak resident memory of one extract process."""

    wall_s: float
    max_rss_bytes: int
    #: Seconds extract spent loading the model (TensorFlow import included),
    #: from its --summary-json. It is 0 when no model was loaded.
    load_s: float


@dataclasses.dataclass
class Results:
    """Results of all measurements, with one list entry per repeat."""

    data_label: str
    n_images: int
    n_distinct: int
    batch_size: int
    workers: int
    workers_is_default: bool
    model_device: str
    model_load_s: float
    first_batch_s: float
    model_only_s: list[float]
    #: CPU seconds of this process during each model-only run, all threads.
    model_only_cpu_s: list[float]
    #: CPU seconds of reading, hashing and decoding every file in one thread.
    decode_cpu_s: list[float]
    naive_s: list[float]
    usable_cores: int
    one_image: list[ProcessResult]
    full: list[ProcessResult]
    rerun: list[ProcessResult]

    @property
    def model_only_rate(self) -> float:
        return self.n_images / min(self.model_only_s)

    @property
    def naive_rate(self) -> float:
        return self.n_images / min(self.naive_s)

    @property
    def model_only_fastest_cpu_s(self) -> float:
        """CPU seconds of the fastest model-only run, the one that sets rate (1)."""
        return self.model_only_cpu_s[self.model_only_s.index(min(self.model_only_s))]

    @property
    def cpu_bound_rate(self) -> float:
        """Highest rate the cores allow when decoding and the model share them.

        Each image costs the model's CPU time plus its decoding CPU time, and
        the model alone does not go faster than rate (1).
        """
        cpu_per_image = (self.model_only_fastest_cpu_s + min(self.decode_cpu_s)) / self.n_images
        return min(self.model_only_rate, self.usable_cores / cpu_per_image)

    @property
    def full_wall_s(self) -> float:
        return min(run.wall_s for run in self.full)

    @property
    def one_image_wall_s(self) -> float:
        return min(run.wall_s for run in self.one_image)

    @property
    def rerun_wall_s(self) -> float:
        return min(run.wall_s for run in self.rerun)

    @property
    def extract_net_s(self) -> float:
        return self.full_wall_s - self.one_image_wall_s

    @property
    def extract_rate(self) -> float:
        return self.n_images / self.extract_net_s if self.extract_net_s > 0 else float("nan")

    @property
    def start_up_spread_s(self) -> float:
        """Max minus min of the one-image wall times, which is 0 after a single run."""
        walls = [run.wall_s for run in self.one_image]
        return max(walls) - min(walls)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    validate_args(parser, args)
    work_dir = Path(tempfile.mkdtemp(prefix="featx-bench-"))
    try:
        print(describe_machine(), flush=True)
        results = run_benchmark(args, work_dir)
    except (FeatxError, BenchmarkError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"Kept the temporary folder {work_dir}", file=sys.stderr)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    print()
    print(format_report(results))
    return 0


class BenchmarkError(Exception):
    """A step of the benchmark failed. The message names the step and the cause."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/extract_throughput.py",
        description="Compare the images/s of featx extract with the model alone and "
        "with a naive OpenCV loop, on the same images.",
    )
    default_data = os.environ.get(DATA_DIR_VARIABLE)
    parser.add_argument(
        "--data", type=Path, default=Path(default_data) if default_data else None,
        help=f"Data folder laid out as featx extract expects (default: ${DATA_DIR_VARIABLE}). "
        "It is only read.",
    )
    parser.add_argument(
        "--synthetic", type=int, metavar="N", default=None,
        help=f"Instead of --data, generate N JPEGs of {SYNTHETIC_SIZE}x{SYNTHETIC_SIZE} "
        f"pixels in two classes in a temporary folder (N at least 2).",
    )
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
        help="Images per model call, in all four measurements (default: %(default)s, "
        "featx extract's default).",
    )
    parser.add_argument(
        "--workers", type=int, default=None,
        help="Decoding threads passed to featx extract (default: featx's default, "
        "one per CPU core, at least 2).",
    )
    parser.add_argument(
        "--repeats", type=int, default=3,
        help="Times each measurement is repeated; the report gives the fastest run "
        "and lists all of them (default: %(default)s).",
    )
    parser.add_argument(
        "--keep", action="store_true",
        help="Keep the temporary folder (generated images, caches, extract logs) "
        "and print its path.",
    )
    return parser


def validate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit through parser.error, with status 2, on an out-of-range option."""
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.synthetic is None and args.data is None:
        parser.error(f"pass --data DIR, set ${DATA_DIR_VARIABLE}, or use --synthetic N")
    if args.synthetic is not None and args.synthetic < 2:
        parser.error(
            f"--synthetic must be at least 2, got {args.synthetic}, because the "
            "one-image run is subtracted from the run on all images"
        )


def describe_machine() -> str:
    """Return one line: cores, CPU model, memory, OS, and Python, featx and TF versions."""
    parts = [f"{usable_cores()} usable of {os.cpu_count()} cores", read_cpu_model()]
    memory = read_total_memory()
    if memory:
        parts.append(f"{memory / 2**30:.0f} GiB RAM")
    parts.append(f"{platform.system()} {platform.release()} {platform.machine()}")
    parts.append(f"Python {platform.python_version()}")
    parts.append(f"featx {featx_version}")
    for package in ("tensorflow", "tensorflow-hub", "opencv-python-headless", "pillow"):
        try:
            parts.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return "machine: " + ", ".join(parts)


def read_cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU model"


def read_total_memory() -> int | None:
    """Return the machine's memory in bytes from /proc/meminfo, or None."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_benchmark(args: argparse.Namespace, work_dir: Path) -> Results:
    data_dir, data_label = prepare_data(args, work_dir)
    images = find_images(data_dir).images
    if len(images) < 2:
        raise BenchmarkError(f"{data_dir} contains only 1 image, but the benchmark needs at least 2")
    paths = [image.path for image in images]
    log(f"Reading {len(images)} images once, so every measurement finds them in the page cache")
    digests, total_bytes = set(), 0
    for path in paths:
        content = path.read_bytes()
        digests.add(hashlib.sha256(content).digest())
        total_bytes += len(content)
    log(f"{len(images)} files, {len(digests)} distinct contents, {total_bytes / 2**20:.0f} MiB")

    # The extract processes run before this process loads TensorFlow, so
    # that its memory and threads are not in their way.
    one_image, full, rerun = run_extract_series(args, data_dir, images, work_dir)
    in_process = run_in_process(args, paths)
    return Results(
        data_label=data_label,
        n_images=len(images),
        n_distinct=len(digests),
        batch_size=args.batch_size,
        workers=args.workers if args.workers is not None else default_workers(),
        workers_is_default=args.workers is None,
        one_image=one_image,
        full=full,
        rerun=rerun,
        **in_process,
    )


def prepare_data(args: argparse.Namespace, work_dir: Path) -> tuple[Path, str]:
    """Return the data folder to measure and its label, generating it under work_dir for --synthetic."""
    if args.synthetic is None:
        return args.data, str(args.data)
    data_dir = work_dir / "data"
    log(f"Generating {args.synthetic} JPEGs of {SYNTHETIC_SIZE}x{SYNTHETIC_SIZE} in {data_dir}")
    started = time.perf_counter()
    write_synthetic_dataset(data_dir, args.synthetic)
    log(f"Generated them in {time.perf_counter() - started:.1f} s")
    return data_dir, f"synthetic, {args.synthetic} JPEGs of {SYNTHETIC_SIZE}x{SYNTHETIC_SIZE}"


def run_extract_series(
    args: argparse.Namespace, data_dir: Path, images: list[ImageFile], work_dir: Path
) -> tuple[list[ProcessResult], list[ProcessResult], list[ProcessResult]]:
    """Run featx extract on one image, on all images, and again on all, and return the three series."""
    one_image_dir = work_dir / "one-image"
    copy_one_image(images[0], one_image_dir)
    options = ["--batch-size", str(args.batch_size)]
    if args.workers is not None:
        options += ["--workers", str(args.workers)]

    log("featx extract on one image, to warm up (not counted)")
    run_extract(one_image_dir, work_dir / "warm-up.h5", options, work_dir / "warm-up.log")
    one_image, full, rerun = [], [], []
    for repeat in range(1, args.repeats + 1):
        # One-image and full runs alternate, so that a change in the load of
        # the machine affects both sides of the subtraction alike.
        prefix = f"run{repeat}"
        one_image.append(run_extract(one_image_dir, work_dir / f"{prefix}-one-image.h5",
                                     options, work_dir / f"{prefix}-one-image.log"))
        full_cache = work_dir / f"{prefix}-full.h5"
        full.append(run_extract(data_dir, full_cache, options, work_dir / f"{prefix}-full.log"))
        check_cache_rows(full_cache, len(images), work_dir / f"{prefix}-full.log")
        rerun.append(run_extract(data_dir, full_cache, options, work_dir / f"{prefix}-rerun.log"))
        log(f"featx extract, run {repeat} of {args.repeats}: one image {one_image[-1].wall_s:.2f} s, "
            f"{len(images)} images {full[-1].wall_s:.2f} s, re-run {rerun[-1].wall_s:.2f} s")
    return one_image, full, rerun


def run_in_process(args: argparse.Namespace, paths: list[Path]) -> dict:
    """Time the model alone and the naive loop with one model loaded here, and return Results fields."""
    log("Decoding every image with featx.decode.decode_image for the model-only runs (not timed)")
    pixels = decode_all(paths)
    batches = [np.stack(pixels[i:i + args.batch_size]) for i in range(0, len(pixels), args.batch_size)]
    del pixels

    log("Loading the model in this process (not counted)")
    embedder, model_load_s, model_device = load_embedder()
    log(f"  {model_load_s:.1f} s, on {model_device}")
    # TensorFlow does one-time work on the first call at a new batch size.
    started = time.perf_counter()
    embedder.embed(batches[0])
    first_batch_s = time.perf_counter() - started

    model_only_s, model_only_cpu_s, decode_cpu_s, naive_s = [], [], [], []
    for repeat in range(1, args.repeats + 1):
        cpu_started = time.process_time()
        model_only_s.append(time_model_only(embedder, batches))
        model_only_cpu_s.append(time.process_time() - cpu_started)
        decode_cpu_s.append(time_decoding_cpu(paths))
        naive_s.append(time_naive(embedder, paths, args.batch_size))
        log(f"In this process, run {repeat} of {args.repeats}: model only {model_only_s[-1]:.2f} s "
            f"({model_only_cpu_s[-1]:.2f} CPU-s), decoding {decode_cpu_s[-1]:.2f} CPU-s, "
            f"naive loop {naive_s[-1]:.2f} s")
    return {
        "model_device": model_device,
        "model_load_s": model_load_s,
        "first_batch_s": first_batch_s,
        "model_only_s": model_only_s,
        "model_only_cpu_s": model_only_cpu_s,
        "decode_cpu_s": decode_cpu_s,
        "naive_s": naive_s,
        "usable_cores": usable_cores(),
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_synthetic_dataset(data_dir: Path, n_images: int) -> None:
    """Write n_images JPEGs, alternating between two class folders, with a few threads."""
    for name in SYNTHETIC_CLASSES:
        (data_dir / name).mkdir(parents=True)
    paths = [
        data_dir / SYNTHETIC_CLASSES[i % len(SYNTHETIC_CLASSES)] / f"{i:06d}.jpg"
        for i in range(n_images)
    ]
    threads = min(8, (os.cpu_count() or 1) + 2)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(write_synthetic_image, paths, range(n_images)):
            pass


def write_synthetic_image(path: Path, seed: int) -> None:
    """Write one smooth colour field with faint grain, about 360 KB as a JPEG of quality 85.

    The smooth field gives the image structure at every scale the resizers
    see, and the grain keeps the file close to the size of a scanned photo of
    that resolution, so decoding costs what it would on real files.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    field = cv2.resize(coarse, (SYNTHETIC_SIZE, SYNTHETIC_SIZE), interpolation=cv2.INTER_CUBIC)
    grain = rng.integers(-3, 4, (SYNTHETIC_SIZE, SYNTHETIC_SIZE, 1), dtype=np.int16)
    image = np.clip(field.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    encoded, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, SYNTHETIC_JPEG_QUALITY])
    if not encoded:
        raise BenchmarkError(f"OpenCV failed to encode the synthetic image {path}")
    path.write_bytes(buffer.tobytes())


def copy_one_image(image: ImageFile, folder: Path) -> None:
    """Make a one-class, one-image data folder from one image of the data."""
    class_dir = folder / image.label
    class_dir.mkdir(parents=True)
    shutil.copyfile(image.path, class_dir / image.path.name)


def run_extract(data_dir: Path, cache_path: Path, options: list[str], log_path: Path) -> ProcessResult:
    """Run ``python -m featx.extract`` in a new process and return its wall time and peak memory.

    Raises BenchmarkError, with the end of the process's output, when it fails.
    """
    result_path = log_path.with_suffix(".json")
    summary_path = log_path.with_suffix(".summary.json")
    command = [
        sys.executable, "-c", _LAUNCHER, str(result_path),
        sys.executable, "-m", "featx.extract", str(data_dir), "--cache", str(cache_path),
        "--no-progress", "--summary-json", str(summary_path), *options,
    ]
    with open(log_path, "wb") as output:
        status = subprocess.call(command, stdout=output, stderr=subprocess.STDOUT)
    if status != 0 or not result_path.exists():
        raise BenchmarkError(
            f"featx extract failed on {data_dir} (exit status {status}); "
            f"the end of its output:\n{tail(log_path)}"
        )
    result = json.loads(result_path.read_text())
    if result["status"] != 0:
        raise BenchmarkError(
            f"featx extract failed on {data_dir} (exit status {result['status']}); "
            f"the end of its output:\n{tail(log_path)}"
        )
    summary = json.loads(summary_path.read_text())
    return ProcessResult(wall_s=result["wall_s"], max_rss_bytes=result["max_rss_bytes"],
                         load_s=summary["load_seconds"])


def tail(path: Path, n_lines: int = 20) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(lines[-n_lines:])


def check_cache_rows(cache_path: Path, n_images: int, log_path: Path) -> None:
    """Raise BenchmarkError unless the cache contains one row per image."""
    from featx.cache import load_cache

    n_rows = len(load_cache(cache_path))
    if n_rows != n_images:
        raise BenchmarkError(
            f"featx extract cached {n_rows} of {n_images} images, so its time is not "
            f"comparable; the end of its output:\n{tail(log_path)}"
        )


def decode_all(paths: list[Path]) -> list[np.ndarray]:
    """Read and decode every file as featx does, to (224, 224, 3) uint8 RGB."""

    def read_and_decode(path: Path) -> np.ndarray:
        return decode_image(path.read_bytes()).pixels

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(read_and_decode, paths))


def load_embedder():
    """Load the model featx extract uses by default, and return it, the seconds taken and its device."""
    from featx.embed import HubEmbedder

    started = time.perf_counter()
    embedder = HubEmbedder(DEFAULT_MODEL_HANDLE)
    load_s = time.perf_counter() - started

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    device = f"GPU ({gpus[0].name})" if gpus else "CPU"
    return embedder, load_s, device


def time_model_only(embedder, batches: list[np.ndarray]) -> float:
    """Return the seconds the model takes on batches already stacked in memory."""
    started = time.perf_counter()
    for batch in batches:
        embedder.embed(batch)
    return time.perf_counter() - started


def time_decoding_cpu(paths: list[Path]) -> float:
    """Return the CPU seconds of reading, hashing and decoding every file as extract does, in one thread."""
    started = time.thread_time()
    for path in paths:
        content = path.read_bytes()
        hashlib.sha256(content).hexdigest()
        decode_image(content)
    return time.thread_time() - started


def time_naive(embedder, paths: list[Path], batch_size: int) -> float:
    """Return the seconds of a one-thread read, resize, embed loop over all images."""
    started = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start:start + batch_size]:
            image = cv2.imread(str(path))
            if image is None:
                raise BenchmarkError(f"cv2.imread failed to read {path}")
            image = cv2.resize(image, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)
            batch.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        embedder.embed(np.stack(batch))
    return time.perf_counter() - started


def format_report(results: Results) -> str:
    """Format the results as two header lines and a Markdown table with aligned columns."""
    workers = f"{results.workers} (featx default)" if results.workers_is_default else str(results.workers)
    header = [
        f"data: {results.data_label}",
        f"{results.n_images} images ({results.n_distinct} distinct contents), "
        f"batch size {results.batch_size}, decoding threads {workers}, model on {results.model_device}, "
        f"best of {len(results.full)} runs",
    ]

    n = results.n_images
    mib = 2**20
    extract_rate = "n/a" if math.isnan(results.extract_rate) else f"{results.extract_rate:.1f}"
    versus_model = results.extract_rate / results.model_only_rate
    versus_naive = results.extract_rate / results.naive_rate
    rows = [
        ("(1) model only, pre-decoded batches", f"{results.model_only_rate:.1f}", "images/s",
         list_values([n / seconds for seconds in results.model_only_s], "{:.1f}")),
        ("(2) featx extract, start-up subtracted", extract_rate, "images/s", ""),
        ("(3) naive cv2 full-size read + model", f"{results.naive_rate:.1f}", "images/s",
         list_values([n / seconds for seconds in results.naive_s], "{:.1f}")),
        ("(4) featx extract re-run, full cache", f"{results.rerun_wall_s:.2f}", "s",
         list_values([run.wall_s for run in results.rerun], "{:.2f}")),
        ("(2) / (1)", "n/a" if math.isnan(versus_model) else f"{versus_model:.2f}", "", ""),
        ("CPU bound on (2) / (1)", f"{results.cpu_bound_rate / results.model_only_rate:.2f}", "", ""),
        ("(2) / (3)", "n/a" if math.isnan(versus_naive) else f"{versus_naive:.2f}", "", ""),
        ("(4) / extract wall time, all images", f"{results.rerun_wall_s / results.full_wall_s:.3f}", "", ""),
        ("extract wall time, all images", f"{results.full_wall_s:.2f}", "s",
         list_values([run.wall_s for run in results.full], "{:.2f}")),
        ("extract wall time, one image", f"{results.one_image_wall_s:.2f}", "s",
         list_values([run.wall_s for run in results.one_image], "{:.2f}")),
        ("extract wall time, all minus one image", f"{results.extract_net_s:.2f}", "s",
         list_values([full.wall_s - one.wall_s for full, one in zip(results.full, results.one_image)],
                     "{:.2f}")),
        ("extract peak RSS, all images", f"{max(r.max_rss_bytes for r in results.full) / mib:.0f}", "MiB",
         list_values([run.max_rss_bytes / mib for run in results.full], "{:.0f}")),
        ("extract peak RSS, one image", f"{max(r.max_rss_bytes for r in results.one_image) / mib:.0f}", "MiB",
         list_values([run.max_rss_bytes / mib for run in results.one_image], "{:.0f}")),
        ("model loading in extract, all images", f"{min(r.load_s for r in results.full):.2f}", "s",
         list_values([run.load_s for run in results.full], "{:.2f}")),
        ("model loading in extract, one image", f"{min(r.load_s for r in results.one_image):.2f}", "s",
         list_values([run.load_s for run in results.one_image], "{:.2f}")),
        ("model only, CPU time (all threads)",
         f"{results.model_only_fastest_cpu_s:.2f}", "CPU-s",
         list_values(results.model_only_cpu_s, "{:.2f}")),
        ("decoding every file in one thread, CPU time", f"{min(results.decode_cpu_s):.2f}", "CPU-s",
         list_values(results.decode_cpu_s, "{:.2f}")),
        ("model loading, in this process", f"{results.model_load_s:.1f}", "s", ""),
        ("first full-size batch, in this process", f"{results.first_batch_s:.2f}", "s", ""),
    ]

    columns = ("measurement", "value", "unit", "all runs")
    report = "\n".join(header) + "\n\n" + markdown_table(columns, rows, right_aligned=(1,))
    warning = check_subtraction(results)
    return report + ("\n\n" + warning if warning else "")


def check_subtraction(results: Results) -> str | None:
    """Return a warning when start-up noise is large against the time left after subtraction."""
    net_s, spread_s = results.extract_net_s, results.start_up_spread_s
    if net_s <= 0:
        return (
            f"warning: (2) is not measured: the run on all images was not slower than "
            f"the run on one image ({results.full_wall_s:.2f} s against "
            f"{results.one_image_wall_s:.2f} s). Use more images or a quieter machine."
        )
    if len(results.one_image) < 2:
        return "note: one run only, so the start-up noise in (2) is unknown; use --repeats 3."
    if spread_s > 0.25 * net_s:
        return (
            f"warning: (2) is uncertain: the one-image wall times spread over {spread_s:.2f} s, "
            f"{spread_s / net_s:.0%} of the {net_s:.2f} s left after subtraction. "
            "Use more images, more --repeats, or a quieter machine."
        )
    return None


def list_values(values: list[float], template: str) -> str:
    return " ".join(template.format(value) for value in values)


def markdown_table(columns: tuple[str, ...], rows: list[tuple[str, ...]], right_aligned=()) -> str:
    """Return a Markdown table padded so that it also reads as plain text."""
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]

    def format_row(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(width) if i in right_aligned else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        ]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join(
        "-" * (width + 1) + ":" if i in right_aligned else "-" * (width + 2)
        for i, width in enumerate(widths)
    ) + "|"
    return "\n".join([format_row(columns), rule, *(format_row(row) for row in rows)])


if __name__ == "__main__":
    sys.exit(main())
