"""The USI loop shared by the fake engines: a correct handshake, then ``on_go`` decides the answer.

An optional first argument names a log file: the engine appends ``start <pid>`` when it starts and
the first word of every command it receives, so tests can count restarts and check for leaked processes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def serve(on_go: Callable[[], str | None], *, name: str, usiok: bool = True) -> None:
    log = open(sys.argv[1], "a", encoding="utf-8") if len(sys.argv) > 1 else None  # noqa: SIM115

    def note(text: str) -> None:
        if log is not None:
            log.write(text + "\n")
            log.flush()

    note(f"start {os.getpid()}")
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        command = words[0]
        note(command)
        if command == "usi":
            print(f"id name {name}")
            print("id author keisei tests")
            if usiok:
                print("usiok")
        elif command == "isready":
            print("readyok")
        elif command == "quit":
            break
        elif command == "go":
            answer = on_go()
            if answer is not None:
                print(f"bestmove {answer}")
        # setoption, usinewgame, position, stop, gameover: nothing to answer
        sys.stdout.flush()
