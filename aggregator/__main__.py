"""``python -m aggregator``: the same command as the ``aggregator`` script (tests run it so)."""

from aggregator.cli import main

if __name__ == "__main__":
    main(prog_name="aggregator")
