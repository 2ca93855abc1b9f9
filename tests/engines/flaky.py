#!/usr/bin/env python3
"""The real fairy-stockfish behind a pipe that dies once: on its ``go`` number N (first argument) it
exits with status 1, if the marker file (second argument) does not exist yet (it creates it first)."""

import os
import subprocess
import sys
import threading

crash_at, marker = int(sys.argv[1]), sys.argv[2]
engine = subprocess.Popen(["/usr/games/fairy-stockfish"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          bufsize=1)


def forward() -> None:
    for line in engine.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()


threading.Thread(target=forward, daemon=True).start()
goes = 0
for line in sys.stdin:
    if line.startswith("go"):
        goes += 1
        if goes == crash_at and not os.path.exists(marker):
            open(marker, "w").close()
            engine.kill()
            os._exit(1)
    engine.stdin.write(line)
    engine.stdin.flush()
    if line.startswith("quit"):
        break
engine.wait()
