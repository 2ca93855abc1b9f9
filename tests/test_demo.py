"""python -m keisei.demo: random self-play end to end, with a summary and records."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rsshogi.record import Record


def test_demo_plays_games_and_writes_records(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "keisei.demo", "--games", "6", "--num-envs", "8", "--max-plies",
                           "40", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("6 games,")
    assert "terminations:" in proc.stdout
    kif = Record.from_kif_str((tmp_path / "game0.kif").read_text(encoding="utf-8"))
    csa = Record.from_csa_str((tmp_path / "game0.csa").read_text(encoding="utf-8"))
    assert 0 < len(kif.moves) == len(csa.moves) <= 40
