"""frames/<step>.png every `save_every` steps and at the last step, and trajectory.mp4 at the end."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genart.callbacks import Callback
from genart.files import write_atomic
from genart.images import save_png


class FramesCallback(Callback):
    def on_start(self, run) -> None:
        self.dir = Path(run.run_dir) / "frames"

    def on_step(self, state: dict) -> None:
        if state["save"]:
            save_png(state["image"](), self.dir / f"{state['step']:05d}.png")


class VideoCallback(Callback):
    """Encode the saved frames to an MP4 (imageio-ffmpeg: fast, unlike GIF)."""

    def __init__(self, fps: int = 10):
        self.fps = fps

    def on_start(self, run) -> None:
        self.run_dir = Path(run.run_dir)

    def on_end(self, state: dict) -> None:
        write_video(
            sorted((self.run_dir / "frames").glob("*.png")),
            self.run_dir / "trajectory.mp4",
            self.fps,
        )


def write_video(frames: list[Path], path: Path, fps: int) -> None:
    if frames:
        # ffmpeg picks its container from the name's ending, so the .part name ends in .mp4 too
        write_atomic(path, lambda tmp: encode_video(frames, tmp, fps), suffix=".part.mp4")


def encode_video(frames: list[Path], path: Path, fps: int) -> None:
    import imageio.v2 as imageio

    with imageio.get_writer(
        path,
        fps=fps,
        codec="libx264",
        macro_block_size=1,
        ffmpeg_log_level="error",
        pixelformat="yuv420p",
    ) as writer:
        for frame in frames:
            rgb = imageio.imread(frame)[..., :3]
            pad = ((0, rgb.shape[0] % 2), (0, rgb.shape[1] % 2), (0, 0))  # yuv420p needs even sides
            writer.append_data(np.pad(rgb, pad, mode="edge"))
