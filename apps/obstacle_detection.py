"""Gradio demo of the road-obstacle detector (car, pedestrian, cyclist): images, webcam frames and
videos with boxes, class and score; score and NMS sliders, counts per class, latency.

    python apps/obstacle_detection.py    # newest export under runs/
    python apps/obstacle_detection.py runs/RUN/export --port 7861 --auth reviewer:s3cret

Serves on http://127.0.0.1 only (--host to change), no share link, no analytics. With no export
yet: lepton-vision train recipes/obstacle_detection/baseline.yaml. The page itself is built by
lepton_vision.serve.demo.build_demo, as for 'lepton-vision demo EXPORT_DIR'.
"""

import sys
from pathlib import Path

from lepton_vision.serve.demo import app_main

TASK = "obstacle_detection"
RUNS = Path(__file__).resolve().parents[1] / "runs"  # where lepton-vision train writes

if __name__ == "__main__":
    sys.exit(app_main(TASK, sys.argv[1:], runs_dir=RUNS))
