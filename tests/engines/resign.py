#!/usr/bin/env python3
"""A USI engine that resigns (``bestmove resign``) on every ``go``."""

from _usi import serve

serve(lambda: "resign", name="fake resign")
