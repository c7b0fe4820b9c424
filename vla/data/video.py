"""MP4 video encode/decode with PyAV: H.264 and AV1, small GOP, fast random access.

Robot-learning samples read single frames at random times, so we encode with a
GOP of a few frames (a random frame then costs one seek plus <= GOP decodes,
~1-10 ms) and decode forward instead of seeking when the next request is close.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

# SVT-AV1 prints a banner to stderr for every encoder; keep only its errors.
os.environ.setdefault("SVT_LOG", "1")

import av  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import ConfigError, DatasetError  # noqa: E402

# Our codec names (as written in info.json "video.codec") -> PyAV encoder.
ENCODERS = {"h264": "libx264", "av1": "libsvtav1"}
# Chroma layouts: yuv420p is what every player and LeRobot expect; yuv444p keeps full-resolution colour,
# which at crf 0 (H.264 only: SVT-AV1 encodes 4:2:0 alone) decodes to the rendered frames up to YUV rounding.
PIX_FMTS = ("yuv420p", "yuv444p")
# Defaults tuned for robot frames: visually lossless-ish, fast to encode.
DEFAULT_OPTIONS = {
    "h264": {"crf": "20", "preset": "veryfast", "bf": "0"},  # no B-frames: decode order = display order
    "av1": {"crf": "30", "preset": "8"},
}


def check_video_format(codec: str, pix_fmt: str) -> None:
    """Raise ConfigError unless we can encode ``codec`` in ``pix_fmt``."""
    if codec not in ENCODERS:
        raise ConfigError(f"unknown video codec {codec!r}; choose one of {sorted(ENCODERS)}")
    if pix_fmt not in PIX_FMTS or (codec == "av1" and pix_fmt != "yuv420p"):
        raise ConfigError(f"pixel format {pix_fmt!r} is not available with {codec}: h264 takes {list(PIX_FMTS)}, "
                          "av1 (SVT-AV1) only yuv420p")


def _rate(fps: float) -> Fraction:
    if not fps or fps <= 0:
        raise ConfigError(f"fps must be > 0, got {fps}")
    return Fraction(fps).limit_denominator(1001)


class VideoWriter:
    """Appends RGB frames to one MP4 file; several episodes may share a file (LeRobot v3.0).

    >>> with VideoWriter("cam.mp4", fps=30, height=64, width=64) as w:
    ...     w.write(frames)  # (T, 64, 64, 3) uint8
    """

    def __init__(
        self,
        path: str | Path,
        *,
        fps: float,
        height: int,
        width: int,
        codec: str = "h264",
        gop: int = 2,
        crf: int | None = None,
        pix_fmt: str = "yuv420p",
        options: dict[str, str] | None = None,
    ):
        check_video_format(codec, pix_fmt)
        if pix_fmt == "yuv420p" and (height % 2 or width % 2):
            raise ConfigError(
                f"{codec} with yuv420p needs even image sizes, got {height}x{width}: crop or resize the images"
            )
        if gop < 1:
            raise ConfigError(f"gop must be >= 1, got {gop}")
        self.path, self.codec, self.height, self.width = Path(path), codec, int(height), int(width)
        self.fps = fps
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), "w")
        self._stream = self._container.add_stream(ENCODERS[codec], rate=_rate(fps))
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = pix_fmt
        self._stream.codec_context.gop_size = gop
        opts = dict(DEFAULT_OPTIONS[codec])
        opts["g"] = str(gop)
        if crf is not None:
            opts["crf"] = str(crf)
        opts.update(options or {})
        self._stream.options = opts
        self.frames_written = 0

    def write(self, frames: np.ndarray) -> None:
        """Append frames (n, H, W, 3) uint8."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise ConfigError(
                f"{self.path.name}: expected uint8 frames of shape (n, {self.height}, {self.width}, 3), "
                f"got {frames.dtype} {frames.shape}"
            )
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.frames_written  # in units of 1/fps (the encoder's time base)
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames_written += 1

    def size_bytes(self) -> int:
        """Bytes on disk so far (approximate while open: the muxer buffers)."""
        return self.path.stat().st_size if self.path.exists() else 0

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def encode_video(path: str | Path, frames: np.ndarray, *, fps: float, codec: str = "h264", gop: int = 2,
                 crf: int | None = None, pix_fmt: str = "yuv420p") -> Path:
    """Write all frames (T, H, W, 3) uint8 to one MP4 and return its path."""
    frames = np.asarray(frames)
    with VideoWriter(path, fps=fps, height=frames.shape[1], width=frames.shape[2], codec=codec, gop=gop, crf=crf,
                     pix_fmt=pix_fmt) as w:
        w.write(frames)
    return Path(path)


class VideoReader:
    """Random access to the frames of one MP4 by presentation time (seconds).

    Keeps the decoder open between calls: a request a few frames ahead of the
    last one decodes forward; anything else seeks to the preceding keyframe.
    """

    def __init__(self, path: str | Path, *, forward_limit: int = 8):
        self.path = Path(path)
        if not self.path.exists():
            raise DatasetError(f"video file {self.path} is missing: download/copy the complete dataset")
        try:
            self._container = av.open(str(self.path))
            self._stream = self._container.streams.video[0]
        except (av.error.FFmpegError, IndexError) as e:
            raise DatasetError(
                f"cannot open video {self.path} ({e}); the file is truncated or corrupt: re-download or re-encode it"
            ) from e
        s = self._stream
        self.codec = s.codec_context.name
        self.width, self.height = s.codec_context.width, s.codec_context.height
        rate = s.average_rate or s.guessed_rate or s.base_rate
        self.fps = float(rate) if rate else None
        self.num_frames = int(s.frames) or None
        self._time_base = s.time_base
        self._forward = forward_limit
        self._iter: Iterator[av.VideoFrame] | None = None
        self._last: av.VideoFrame | None = None
        self.decoded = 0  # frames decoded so far (for benchmarks/tests)
        self.seeks = 0

    # -- decoding ----------------------------------------------------------------------------
    def _next(self) -> av.VideoFrame | None:
        try:
            frame = next(self._iter)
        except StopIteration:
            self._iter = None
            return None
        except av.error.FFmpegError as e:
            raise DatasetError(f"cannot decode {self.path} ({e}); the file is corrupt: re-encode it") from e
        self.decoded += 1
        self._last = frame
        return frame

    def _seek(self, t: float) -> None:
        pts = int(max(t, 0.0) / self._time_base)
        try:
            self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
        except av.error.FFmpegError as e:
            raise DatasetError(f"cannot seek in {self.path} ({e}); the file is corrupt: re-encode it") from e
        self._iter = self._container.decode(self._stream)
        self._last = None
        self.seeks += 1

    def _frame_at(self, t: float, tol: float) -> av.VideoFrame:
        last = self._last
        if last is not None and abs(last.time - t) <= tol:
            return last
        step = 1.0 / self.fps if self.fps else tol
        ahead = last is not None and self._iter is not None and last.time < t <= last.time + self._forward * step
        if not ahead:
            self._seek(t - tol)
        while True:
            frame = self._next()
            if frame is None:
                break
            if frame.time >= t - tol:
                if frame.time > t + tol:
                    break
                return frame
        raise DatasetError(
            f"video {self.path} has no frame at t={t:.4f}s (last decoded: "
            f"{'none' if self._last is None else f'{self._last.time:.4f}s'}). The video is truncated or the "
            "episode metadata (timestamps / from_timestamp) does not match it: re-encode or fix the metadata"
        )

    def frame_at(self, t: float, tolerance: float | None = None) -> np.ndarray:
        """The RGB frame (H, W, 3) uint8 shown at time ``t`` (within ``tolerance`` seconds)."""
        return self.frames_at([t], tolerance)[0]

    def frames_at(self, times: Sequence[float], tolerance: float | None = None) -> np.ndarray:
        """Frames (n, H, W, 3) uint8 at the given times (any order; decoded in time order)."""
        tol = tolerance if tolerance is not None else (0.4 / self.fps if self.fps else 1e-3)
        times = np.asarray(times, dtype=np.float64)
        out = np.empty((len(times), self.height, self.width, 3), np.uint8)
        for i in np.argsort(times, kind="stable"):
            out[i] = self._frame_at(float(times[i]), tol).to_ndarray(format="rgb24")
        return out

    def read_all(self) -> np.ndarray:
        """Every frame in order, (T, H, W, 3) uint8 (sequential decode, no seeking)."""
        self._seek(0.0)
        frames = []
        while (f := self._next()) is not None:
            frames.append(f.to_ndarray(format="rgb24"))
        return np.stack(frames) if frames else np.empty((0, self.height, self.width, 3), np.uint8)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def probe(path: str | Path) -> dict:
    """Codec, size, fps and frame count of an MP4 without decoding it."""
    with VideoReader(path) as r:
        return {"codec": r.codec, "height": r.height, "width": r.width, "fps": r.fps, "frames": r.num_frames}
