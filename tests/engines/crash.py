#!/usr/bin/env python3
"""A USI engine that completes the handshake and dies (exit status 1) on its first ``go``."""

import sys

from _usi import serve


def crash() -> None:
    sys.exit(1)


serve(crash, name="fake crash")
