"""Command line: ``python -m labkit doctor`` | ``python -m labkit prepare``."""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="check the environment, one line per requirement")
    sub.add_parser("prepare", help="convert the packaged model to the safetensors cache")
    args = parser.parse_args(argv)
    if args.command == "doctor":
        from .doctor import report

        return 0 if report() else 1
    if args.command == "prepare":
        from .models import load_model

        load_model(verbose=True)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
