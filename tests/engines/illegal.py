#!/usr/bin/env python3
"""A USI engine that answers every ``go`` with 5e5d: no piece of either side stands on 5e
before that side's first move, so the move is illegal whenever the engine has not moved yet."""

from _usi import serve

serve(lambda: "5e5d", name="fake illegal")
