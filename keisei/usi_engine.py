"""``python -m keisei.usi_engine``: the USI engine of ``keisei.play.usi_engine`` under its short name."""

from keisei.play.usi_engine import main

if __name__ == "__main__":
    main()
