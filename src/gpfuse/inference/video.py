"""2D segmentation of a video, frame by frame, through a segmentation predictor: an overlay video (the mask as a
translucent fill with its contour, same size and frame rate) and a per-frame CSV. Frames are decoded on the fly
and segmented in batches; only ``predictor.probabilities`` touches the model, so any engine behind the predictor
works.

Example::

    seg = gpfuse.load("runs/ea_dk_kvasir/seed_42")
    summary = segment_video(seg, "colonoscopy.mp4", "overlay.mp4")   # + overlay.csv
    summary.fps                                                       # frames segmented per second
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from gpfuse.utils.files import atomic_path
from gpfuse.utils.progress import counter

log = logging.getLogger(__name__)

__all__ = [
    "VIDEO_SUFFIXES",
    "FramePredictor",
    "VideoSummary",
    "check_video_request",
    "is_video",
    "overlay_mask",
    "segment_video",
]

#: suffixes read as videos; the overlay can be written as one of WRITE_CODECS' suffixes
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".mpg", ".mpeg", ".wmv", ".webm", ".flv")
WRITE_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
FILL_BGR = (40, 40, 255)  # the red of the image overlays (tasks/overlays.py), in OpenCV's BGR order
CSV_HEADER = ["frame", "time_s", "polyp_area_px", "max_probability", "polyp_present"]
DEFAULT_FPS = 25.0  # for a video that does not state its frame rate


class FramePredictor(Protocol):
    """What the video needs of a predictor (:class:`~gpfuse.inference.SegmentationPredictor` has it)."""

    threshold: float
    batch_size: int

    def probabilities(self, images: Sequence[np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class VideoSummary:
    """What :func:`segment_video` wrote and how fast: ``fps`` is frames segmented per second of wall time
    (decoding, model, overlay and encoding together); ``video_fps`` the input's (and output's) frame rate."""

    video: Path
    csv: Path
    frames: int
    width: int
    height: int
    video_fps: float
    frames_with_polyp: int
    seconds: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else math.inf


def is_video(path: str | Path) -> bool:
    """``path`` names a video file (by its suffix, one of :data:`VIDEO_SUFFIXES`)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES and not Path(path).is_dir()


def check_video_request(task: str, data: Path, out: Path) -> bool:
    """Whether ``gpfuse predict`` on ``data`` is a video prediction (``data`` is a video file); a clear error
    where a video goes to a run that is not 2D segmentation, a video's ``out`` is not a video file, or ``out``
    is a video file for data that is not a video."""
    if not is_video(data):
        if out.suffix.lower() in VIDEO_SUFFIXES:
            raise ValueError(
                f"--out {out} is a video file, but {data} is not a video: an overlay video is written only for a "
                f"video input ({', '.join(VIDEO_SUFFIXES)}); give --out a folder (segmentation) or a CSV file"
            )
        return False
    if task != "segmentation":
        raise ValueError(f"{data} is a video: video prediction is for 2D segmentation runs, this run is {task!r}")
    _check_video_out(data, out)
    return True


def _check_video_out(video: Path, out: Path) -> None:
    if out.suffix.lower() not in WRITE_CODECS:
        raise ValueError(
            f"{video} is a video, so its predictions are an overlay video: --out {out} must be a video file "
            f"({', '.join(WRITE_CODECS)}), not {'a folder' if out.is_dir() or not out.suffix else repr(out.suffix)}"
        )
    if out.exists() and out.resolve() == video.resolve():
        raise ValueError(f"--out {out} is the input video itself: give another path")


def overlay_mask(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """(H, W, 3) uint8 BGR frame with the (H, W) bool mask filled translucently in red and its contour drawn."""
    out = frame.copy()
    if mask.any():
        out[mask] = ((1 - alpha) * frame[mask] + alpha * np.array(FILL_BGR)).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, FILL_BGR, max(1, round(min(frame.shape[:2]) / 176)))
    return out


def _open(video: Path) -> cv2.VideoCapture:
    if not video.is_file():
        raise FileNotFoundError(f"{video}: no such video file")
    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise ValueError(f"{video}: not a readable video (OpenCV cannot open it: corrupt, truncated or unknown format)")
    return capture


def _batches(capture: cv2.VideoCapture, video: Path, size: int) -> Iterator[list[np.ndarray]]:
    """Decoded (H, W, 3) uint8 BGR frames, ``size`` at a time; an error naming a frame of another size."""
    batch: list[np.ndarray] = []
    shape, index = None, 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        shape = shape or frame.shape
        if frame.shape != shape:
            raise ValueError(f"{video}: frame {index} is {frame.shape}, not {shape} as frame 0")
        index += 1
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _ignore(n: int) -> None:
    """Counts nothing (``progress=False``)."""


@contextmanager
def _atomic_video_path(path: Path) -> Iterator[Path]:
    """Like :func:`~gpfuse.utils.files.atomic_path`, with the temporary name ending in ``path``'s suffix
    (OpenCV picks the container by it)."""
    with atomic_path(path) as tmp:
        video_tmp = tmp.with_name(tmp.name + path.suffix)
        try:
            yield video_tmp
            os.replace(video_tmp, tmp)
        finally:
            video_tmp.unlink(missing_ok=True)


def _open_writer(path: Path, out: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    """A writer of ``size`` (width, height) frames into ``path`` with the codec of ``out``'s suffix."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*WRITE_CODECS[out.suffix.lower()]), fps, size)
    if not writer.isOpened():
        raise OSError(f"{out}: OpenCV cannot write a {out.suffix} video there")
    return writer


def segment_video(
    predictor: FramePredictor,
    video: str | Path,
    out: str | Path,
    batch_size: int | None = None,
    csv_path: str | Path | None = None,
    progress: bool = True,
) -> VideoSummary:
    """Segment every frame of ``video`` with ``predictor`` (at its threshold), ``batch_size`` frames per call
    (default: the predictor's), and write the overlay video ``out`` (same size and frame rate; codec by suffix:
    mp4v for .mp4/.m4v/.mov/.mkv, MJPG for .avi) and ``csv_path`` (default ``out`` with suffix .csv: one row
    per frame ``frame,time_s,polyp_area_px,max_probability,polyp_present``), both atomically. ``progress``
    shows a progress bar and then prints the frames per second achieved."""
    video, out = Path(video), Path(out)
    csv_path = Path(csv_path) if csv_path is not None else out.with_suffix(".csv")
    _check_video_out(video, out)
    rows: list[list[object]] = []
    writer, width, height, with_polyp = None, 0, 0, 0
    start = time.perf_counter()
    with ExitStack() as stack:  # unwinds in reverse: writer, progress bar, temporary video, capture
        capture = _open(video)
        stack.callback(capture.release)
        video_fps = capture.get(cv2.CAP_PROP_FPS)
        video_fps = video_fps if math.isfinite(video_fps) and video_fps > 0 else DEFAULT_FPS
        expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None  # a container's estimate, maybe absent
        video_tmp = stack.enter_context(_atomic_video_path(out))
        advance = stack.enter_context(
            counter(f"segmenting {video.name}: frames", expected) if progress else nullcontext(_ignore)
        )
        for frames in _batches(capture, video, batch_size or predictor.batch_size):
            probabilities = predictor.probabilities([cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames])
            if writer is None:
                height, width = frames[0].shape[:2]
                writer = _open_writer(video_tmp, out, video_fps, (width, height))
                stack.callback(writer.release)
            for frame, probability in zip(frames, probabilities):
                mask = probability >= predictor.threshold
                writer.write(overlay_mask(frame, mask))
                area = int(mask.sum())
                with_polyp += area > 0
                i = len(rows)
                rows.append([i, f"{i / video_fps:.3f}", area, f"{probability.max():.4f}", int(area > 0)])
            advance(len(frames))
        if writer is None:
            raise ValueError(f"{video}: the video has 0 frames")
        if expected is not None and len(rows) < expected:  # OpenCV ends a stream at the first undecodable frame
            log.warning(
                "%s: decoded %d of the %d frames its container announces; the rest could not be decoded "
                "(truncated or corrupt?) and are not in %s",
                video,
                len(rows),
                expected,
                out,
            )
        writer.release()  # the container's trailer is written: the time counts it
        seconds = time.perf_counter() - start
        with atomic_path(csv_path) as tmp, tmp.open("w", newline="") as f:
            csv.writer(f).writerows([CSV_HEADER, *rows])
    summary = VideoSummary(out, csv_path, len(rows), width, height, video_fps, with_polyp, seconds)
    if progress:
        from rich import get_console

        get_console().print(
            f"{summary.frames} frames ({width}x{height}, {video_fps:g} fps video), {summary.frames_with_polyp} with "
            f"a polyp: {summary.fps:.1f} frames/s; overlay {out}, per-frame CSV {csv_path}",
            soft_wrap=True,
        )
    return summary
