"""Thin script form of ``goalgen-submit`` (see goalgen.launch)."""

from goalgen.launch import main

if __name__ == "__main__":
    main()
