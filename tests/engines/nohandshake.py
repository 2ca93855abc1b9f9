#!/usr/bin/env python3
"""A USI engine that answers ``usi`` with its id but never with ``usiok`` (it still obeys ``quit``)."""

from _usi import serve

serve(lambda: None, name="fake nohandshake", usiok=False)
