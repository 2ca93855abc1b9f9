#!/usr/bin/env python3
"""A USI engine that hangs on ``go``: it sleeps without answering or reading (not even ``quit``)."""

import time

from _usi import serve


def hang() -> None:
    time.sleep(60)  # bounded, so that a test that fails to kill it leaves no process for long


serve(hang, name="fake silent")
