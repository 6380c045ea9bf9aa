"""Run a frozen TF Hub image model on batches of decoded images.

TensorFlow is imported only when a model is loaded, so commands that find
nothing new to embed start in a fraction of a second.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Protocol

import numpy as np

from featx.config import INPUT_SIZE
from featx.errors import FeatxError

logger = logging.getLogger(__name__)


class Embedder(Protocol):
    """Anything that maps a batch of RGB images to feature vectors.

    Attributes
    ----------
    handle : str
        Identifies the model; stored in the cache and compared on every run.
    embedding_size : int
        Length of one feature vector.
    """

    handle: str
    embedding_size: int

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Map uint8 images of shape (n, 224, 224, 3) to float32 of shape (n, embedding_size)."""


def is_url(handle: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*://", handle) is not None and not handle.startswith("file://")


class HubEmbedder:
    """A TF Hub model (handle URL or local SavedModel folder) as an Embedder.

    The model must follow the image feature-vector contract: float32 RGB in
    [0, 1] of shape (batch, input_size, input_size, 3) in, float32 of shape
    (batch, embedding_size) out. Conversion from uint8 happens inside
    TensorFlow.

    Parameters
    ----------
    handle : str
        ``https://tfhub.dev/...`` handle, resolved through ``$TFHUB_CACHE_DIR``
        when the model is there, or a local SavedModel folder.
    device : {"auto", "cpu", "gpu"}
        "auto" lets TensorFlow place the model (on a GPU when one is visible).
    mixed_precision : bool
        Turn on TensorFlow's automatic mixed precision graph rewrite, which
        runs float16 kernels on a GPU and has no effect on a CPU.
    input_size : int
        Side of the square input in pixels.
    warmup_batch_size : int
        Batch of blank images run once at load time. TensorFlow prepares its
        kernels for a batch shape on the first call with it, which takes a
        large part of a second on a CPU; doing it here keeps that start-up
        cost out of the first real batch.
    """

    def __init__(
        self,
        handle: str,
        device: str = "auto",
        mixed_precision: bool = False,
        input_size: int = INPUT_SIZE,
        warmup_batch_size: int = 1,
    ) -> None:
        tf = _import_tensorflow_quietly()
        self.handle = handle
        self.input_size = input_size
        self._tf = tf
        self._device = _tf_device_name(tf, device)
        if mixed_precision:
            tf.config.optimizer.set_experimental_options({"auto_mixed_precision": True})
        model = _load_model(handle)

        @tf.function(
            input_signature=[tf.TensorSpec([None, input_size, input_size, 3], tf.uint8)]
        )
        def embed_uint8(images):
            return model(tf.cast(images, tf.float32) / 255.0)

        self._model = model
        self._embed_uint8 = embed_uint8
        probe = self.embed(np.zeros((max(1, warmup_batch_size), input_size, input_size, 3), np.uint8))
        self.embedding_size = int(probe.shape[1])
        logger.info(
            "Model %s: input %dx%d RGB, %d features, on %s",
            handle, input_size, input_size, self.embedding_size, self._device,
        )

    def embed(self, images: np.ndarray) -> np.ndarray:
        with self._tf.device(self._device):
            output = self._embed_uint8(images)
        output = np.array(output, dtype=np.float32)
        if output.ndim != 2 or output.shape[0] != images.shape[0]:
            raise FeatxError(
                "Unsupported model output",
                self.handle,
                expected="a feature vector of shape (batch, n_features)",
                got=f"shape {tuple(output.shape)}",
                hint="Use an image feature-vector model, not a classifier or a detector.",
            )
        return output


def _import_tensorflow_quietly():
    """Import TensorFlow and probe its devices with C++ start-up messages hidden.

    TensorFlow 2.21 prints oneDNN and CUDA notices to file descriptor 2
    before its log settings apply, so TF_CPP_MIN_LOG_LEVEL cannot hide them.
    They are captured and logged at debug level (shown with --verbose).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if logger.isEnabledFor(logging.DEBUG):
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
        return tf
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace").strip()
    if text:
        logger.debug("TensorFlow start-up messages:\n%s", text)
    return tf


def _tf_device_name(tf, device: str) -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise FeatxError(
            "No GPU visible to TensorFlow",
            "--device gpu",
            hint="Use --device cpu or auto, or install a TensorFlow build with GPU support.",
        )
    if device == "cpu" or (device == "auto" and not gpus):
        return "/CPU:0"
    return "/GPU:0"


def check_model_handle(handle: str) -> None:
    """Raise FeatxError when ``handle`` names a local folder that does not exist.

    Called before any work, so that a mistyped --model fails at once.
    """
    if not is_url(handle):
        path = handle[len("file://"):] if handle.startswith("file://") else handle
        if not os.path.isdir(path):
            raise FeatxError(
                "Model folder not found",
                handle,
                expected="a TF Hub handle URL or a local SavedModel folder",
            )


def _load_model(handle: str):
    check_model_handle(handle)
    import tensorflow_hub as hub

    try:
        return hub.load(handle)
    except Exception as error:  # noqa: BLE001 - hub and TF raise many unrelated types
        cache_dir = os.environ.get("TFHUB_CACHE_DIR")
        where = f"TFHUB_CACHE_DIR={cache_dir}" if cache_dir else "TFHUB_CACHE_DIR is not set"
        raise FeatxError(
            "Cannot load model",
            handle,
            hint=(
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}) "
                f"Without network access the model must be in the TF Hub cache folder "
                f"({where}); or pass --model with a local SavedModel folder."
            ),
        ) from error
