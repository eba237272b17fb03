"""The modules of ``bench/bench_live.py``: the live-microphone bench (workers away for a stretch, then back)."""
