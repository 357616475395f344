"""Building blocks of ``bench/detection.py``'s rule comparison (budget curves, review queue,
synthetic track, reliability diagram, serving cost of tag context)."""
