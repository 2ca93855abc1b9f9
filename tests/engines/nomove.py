#!/usr/bin/env python3
"""A USI engine that completes the handshake and answers every ``go`` with a bare ``bestmove`` (no move)."""

from _usi import serve

serve(lambda: "", name="fake nomove")
