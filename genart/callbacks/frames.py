"""frames/<step>.png every `save_every` steps and at the last step; trajectory.mp4 from them at the end."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genart.callbacks import Callback
from genart.files import write_atomic
from genart.images import save_png


class FramesCallback(Callback):
    """Save frames, then encode the ones it saved (a resumed run's too) into an MP4 (imageio-ffmpeg:
    fast, unlike GIF). Adds `report["video"]` (the MP4's path) for the callbacks after it."""

    def __init__(self, fps: int = 10):
        self.fps = fps

    def on_start(self, run) -> None:
        self.dir = Path(run.run_dir) / "frames"
        self.video = Path(run.run_dir) / "trajectory.mp4"
        # a resumed run's video starts with the frames this callback saved before the checkpoint
        self.saved = {
            int(p.stem): p
            for p in self.dir.glob("*.png")
            if p.stem.isdigit() and int(p.stem) <= run.start_step
        }

    def on_step(self, report: dict) -> None:
        if report["save"]:
            path = self.dir / f"{report['step']:05d}.png"
            save_png(report["image"](), path)
            self.saved[report["step"]] = path

    def on_end(self, report: dict) -> None:
        if write_video([self.saved[step] for step in sorted(self.saved)], self.video, self.fps):
            report["video"] = self.video


def write_video(frames: list[Path], path: Path, fps: int) -> bool:
    """Encode `frames` to `path`; False when there are none (no file written)."""
    if not frames:
        return False
    # ffmpeg picks its container from the name's ending, so the .part name ends in .mp4 too
    write_atomic(path, lambda tmp: encode_video(frames, tmp, fps), suffix=".part.mp4")
    return True


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
