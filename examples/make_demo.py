"""Build the bundled demo: examples/demo.mp4 (two sounding objects) and demo_mask.png (the ball).

Everything is generated here (picture, sounds, mask); nothing is downloaded.
Run: python examples/make_demo.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scene import first_mask, make_scene, write_clip  # noqa: E402


def main() -> None:
    scene = make_scene(duration=8.0, width=640, height=360, fps=25.0)
    write_clip(scene, HERE / "demo.mp4", stereo=True, crf=26)
    cv2.imwrite(str(HERE / "demo_mask.png"), first_mask(scene, "a"))
    print(
        f"wrote {HERE / 'demo.mp4'} ({(HERE / 'demo.mp4').stat().st_size / 1e6:.2f} MB) "
        f"and {HERE / 'demo_mask.png'}"
    )


if __name__ == "__main__":
    main()
