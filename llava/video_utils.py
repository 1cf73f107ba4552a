"""Video decoding and preprocessing for Video-LLaVA, as LanguageBind's video processor does it.

Frames: ``num_frames`` (8) at integer ``linspace(0, n - 1, num_frames)`` over the ``n`` decoded frames.
Transform, in upstream's order: ``/255``, OpenAI-CLIP mean/std, short side to ``size`` (bilinear, as
pytorchvideo's ``ShortSideScale``), centre crop ``size`` (torchvision's ``CenterCropVideo``), and
optionally a horizontal flip: upstream applies ``RandomHorizontalFlipVideo(p=0.5)`` even at inference,
so the caller decides (``flip``) to keep runs repeatable.

Decoders (the ``[video]`` extra): decord, which upstream uses and ``auto`` picks whenever it is installed
(its wheels exist for x86-64 Linux and Windows only), else PyAV. On even-sized frames the two return the
same pixels and the same sampled frames for mpeg4/AVI, H.264 and HEVC/MP4, MJPEG and FFV1/MKV, VP8/VP9/WebM;
on odd-sized 4:2:0 frames their colour conversion differs (mean 1.3–2.5, max ≤ 52 of 255 per channel), and
once decord 0.6 seeks, it returns other frames than the sampled ones in MPEG-2 program streams (.mpg) and
MPEG-4 part 2 with B-frames (AVI or MP4), where PyAV's sequential decode is right (``tests/test_video.py``).
``decoder_info`` names the decoder and its version for a run's records.
"""
from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llava.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

BACKENDS = ("decord", "pyav")
_MODULES = {"decord": "decord", "pyav": "av"}
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")  # upstream's lookup order


class VideoDecodeError(ValueError):
    """A video file exists but cannot be decoded (or has no frames)."""


def available_backends() -> list[str]:
    return [b for b in BACKENDS if importlib.util.find_spec(_MODULES[b]) is not None]


def resolve_backend(backend: str = "auto") -> str:
    """``auto``: decord if installed (upstream's decoder), else PyAV. A missing decoder names what to install."""
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown video backend {backend!r} (auto, {', '.join(BACKENDS)})")
    installed = available_backends()
    if backend == "auto":
        if not installed:
            raise ImportError("decoding videos needs decord or PyAV: pip install 'fastervlm[video]' (decord where it has "
                              "a wheel, x86-64 Linux and Windows, and PyAV)")
        return installed[0]
    if backend not in installed:
        raise ImportError(f"video backend {backend!r} is not installed: "
                          + ("pip install 'fastervlm[video]'" if backend == "pyav" else "pip install decord "
                             "(wheels for x86-64 Linux and Windows only; elsewhere use --video-backend pyav)"))
    return backend


def decoder_info(backend: str = "auto") -> dict[str, str]:
    """The decoder ``backend`` resolves to and its version, e.g. ``{"backend": "decord", "version": "0.6.0"}``."""
    name = resolve_backend(backend)
    module = importlib.import_module(_MODULES[name])
    return {"backend": name, "version": str(getattr(module, "__version__", "unknown"))}


def sample_indices(num_decoded: int, num_frames: int) -> list[int]:
    """Upstream's uniform sampling: ``linspace(0, n - 1, num_frames)`` truncated to int (repeats when n < num_frames)."""
    return np.linspace(0, num_decoded - 1, num_frames, dtype=int).tolist()


def find_video(video_dir: str | os.PathLike, name: str) -> Path | None:
    """``video_dir/name`` + the first of upstream's extensions that exists, or None."""
    for ext in VIDEO_EXTENSIONS:
        path = Path(video_dir) / f"{name}{ext}"
        if path.is_file():
            return path
    return None


def _read_decord(path: Path, num_frames: int) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    if len(reader) == 0:
        raise VideoDecodeError(f"{path}: no video frames")
    return reader.get_batch(sample_indices(len(reader), num_frames)).asnumpy()


def _read_pyav(path: Path, num_frames: int) -> np.ndarray:
    """Decode sequentially, keeping only the sampled frames (long videos never sit in memory whole).

    The container's frame count is a guess (0 or off for some files), so the sampled indices come from
    it only if a full pass decodes exactly that many frames; else a second pass uses the true count.
    """
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path}: no video stream")
        n = container.streams.video[0].frames
    for _ in range(2):
        wanted = set(sample_indices(n, num_frames)) if n > 0 else set()
        kept, count = {}, 0
        with av.open(str(path)) as container:
            for count, frame in enumerate(container.decode(video=0), 1):
                if count - 1 in wanted:
                    kept[count - 1] = frame.to_ndarray(format="rgb24")
        if count == 0:
            raise VideoDecodeError(f"{path}: no video frames")
        if count == n:
            return np.stack([kept[i] for i in sample_indices(n, num_frames)])
        n = count
    raise VideoDecodeError(f"{path}: the frame count changes between decodes")


def read_frames(path: str | os.PathLike, num_frames: int = 8, backend: str = "auto") -> torch.Tensor:
    """(num_frames, H, W, 3) uint8 RGB frames sampled uniformly from the video at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    reader = _read_decord if resolve_backend(backend) == "decord" else _read_pyav
    try:
        frames = reader(path, num_frames)
    except VideoDecodeError:
        raise
    except Exception as e:  # each decoder raises its own types; name the file either way
        raise VideoDecodeError(f"cannot decode {path}: {e}") from None
    return torch.from_numpy(np.ascontiguousarray(frames))


def preprocess_frames(frames: torch.Tensor, size: int = 224, flip: bool = False) -> torch.Tensor:
    """LanguageBind's video transform: uint8 (T, H, W, 3) → float32 (3, T, size, size)."""
    x = frames.permute(3, 0, 1, 2).float() / 255.0  # (3, T, H, W)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1, 1)
    x = (x - mean) / std
    h, w = x.shape[-2:]
    # pytorchvideo ShortSideScale: short side to `size`, long side floor(long / short · size), bilinear, no antialias.
    new_h, new_w = (math.floor(h / w * size), size) if w < h else (size, math.floor(w / h * size))
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    # torchvision CenterCropVideo: offsets rounded with Python's round (half to even).
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    x = x[..., top:top + size, left:left + size]
    return x.flip(-1) if flip else x


@dataclass
class VideoProcessor:
    """Path → (3, T, size, size) float32 clip for the video tower (``size``/``num_frames`` from its config)."""

    size: int = 224
    num_frames: int = 8
    backend: str = "auto"

    def __call__(self, path: str | os.PathLike, flip: bool = False) -> torch.Tensor:
        return preprocess_frames(read_frames(path, self.num_frames, self.backend), self.size, flip)

    @property
    def decoder(self) -> dict[str, str]:
        """:func:`decoder_info` of this processor's backend."""
        return decoder_info(self.backend)
