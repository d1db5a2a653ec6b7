"""Torch plumbing shared by the training kernels: device, threads, precision, budget.

:func:`neuropipe.ops.train_membrane` (2-D U-Net) and :func:`neuropipe.ops.train_nuclei`
(3-D U-Net) choose their device, arithmetic and stopping point the same way.
"""

from __future__ import annotations

import ctypes
import functools
import io
import math
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from ._validate import check_positive, check_positive_int

PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass
class TrainedModel:
    """A trained network, its hyperparameters and its loss history (base of the model classes).

    Attributes
    ----------
    network : torch.nn.Module
        The torch module, in eval mode.
    hyperparameters : dict
        Plain python values: the network's shape, what inputs need before it sees them and,
        for the record, the training settings, ``device`` and ``seconds``.
    history : list of float
        Training loss per iteration.
    """

    network: torch.nn.Module
    hyperparameters: dict
    history: list = field(default_factory=list)

    @property
    def iterations(self):
        """Number of training iterations run (int)."""
        return len(self.history)

    @property
    def final_loss(self):
        """Loss of the last training iteration (float; NaN without history)."""
        return float(self.history[-1]) if self.history else math.nan

    @property
    def train_seconds(self):
        """Wall-clock training time in seconds (float)."""
        return float(self.hyperparameters.get("seconds", math.nan))

    @property
    def device(self):
        """Device the model was trained on, e.g. ``'cpu'`` (str)."""
        return str(self.hyperparameters.get("device", "cpu"))

    def summary(self):
        """Return the model's bytes (``to_bytes``) and its training record, as a model table stores them."""
        return dict(model=self.to_bytes(), iterations=self.iterations, train_seconds=self.train_seconds,
                    final_loss=self.final_loss, device=self.device)


def _resolve_device(device):
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, (str, torch.device)):
        return torch.device(device)
    raise ValueError(f"device must be None, a str or a torch.device; got {device!r}")


@contextmanager
def _threads(num_threads):
    """Set torch's intra-op thread count for the duration, if asked to."""
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(check_positive_int("num_threads", num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)



def _resolve_precision(precision, device):
    """Return 'bfloat16' or 'float32': what ``precision`` means on ``device``.

    'auto' takes bfloat16 autocast where the hardware computes it natively
    (CUDA GPUs with bf16 support; CPUs with AVX512-BF16 or AMX, via oneDNN),
    where it roughly doubles the throughput of the convolutions, and float32
    elsewhere, where emulated bfloat16 would be slower than float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bfloat16" if native else "float32"


def _autocast(device, precision):
    """Mixed-precision context for the network's forward pass (weights and loss stay float32)."""
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@functools.cache
def _keep_freed_memory():
    """Stop glibc returning freed tensor memory to the kernel after every step.

    Each training step allocates and frees the same large activation buffers;
    with glibc's defaults they are mmap'd and unmapped every time, and the page
    faults made about a fifth of the CPU time system time here.  Raising the
    mmap and trim thresholds keeps them in the heap for reuse (measured 1.25x
    steps per second on a 2-core CPU).  Process-wide; a no-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    kept = any(libc.mallopt(m_mmap_threshold, size) for size in (1 << 30, 32 << 20))
    return kept and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def _stopping(iterations, minutes):
    if iterations is None and minutes is None:
        raise ValueError("give iterations and/or minutes to bound training; got neither")
    iterations = math.inf if iterations is None else check_positive_int("iterations", iterations)
    seconds = math.inf if minutes is None else 60.0 * check_positive("minutes", minutes)
    return iterations, seconds



def model_bytes(kind, version, network, hyperparameters, history):
    """Serialise a trained network with :func:`torch.save`, tagged with its ``kind`` and format ``version``.

    The result loads with ``torch.load(..., weights_only=True)``: plain containers, numbers,
    strings and tensors only.
    """
    payload = {
        "format": kind,
        "version": version,
        "hyperparameters": dict(hyperparameters),
        "history": [float(value) for value in history],
        "state_dict": {name: value.detach().cpu() for name, value in network.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def load_model_bytes(data, kind, version, name):
    """Return the payload :func:`model_bytes` wrote, checked to be a ``kind`` of ``version``.

    Raises
    ------
    ValueError
        Naming ``name`` (the model class) when ``data`` is not bytes, not such a payload, or
        of another format version.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"data must be bytes; got {type(data).__name__}")
    try:
        payload = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types on bad input
        raise ValueError(f"data is not a serialised {name} ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != kind:
        raise ValueError(f"data is not a serialised {name} (missing format tag)")
    if payload.get("version") != version:
        raise ValueError(f"{name} format version {payload.get('version')!r} is not supported; expected {version}")
    return payload
