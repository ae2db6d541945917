"""Command line: ``python -m labkit doctor`` | ``prepare`` | ``claims`` | ``export`` (``--help`` for each)."""
import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="check the environment, one line per requirement")
    sub.add_parser("prepare", help="convert the packaged model to the safetensors cache")
    claims = sub.add_parser("claims", help="every lesson's claims, what the notebooks measured, and the verdicts")
    claims.add_argument("--outputs", help="the outputs/ folder to read (default: ./outputs or LABKIT_OUTPUTS)")
    export = sub.add_parser("export", help="write an experiment as a standalone multi-GPU training job")
    export.add_argument("--config", help="a TrainConfig JSON file (TrainConfig.save); default: TrainConfig()")
    export.add_argument("--model", default="smollm2-135m-instruct", help="registry name, hub id or folder")
    export.add_argument("--data", required=True, help="JSON-lines training file (path or name in data/)")
    export.add_argument("--out", help="the job folder (default: outputs/jobs/<data>-<method>)")
    export.add_argument("--gpu-gb", type=float, help="memory of one target GPU in GiB: refuse jobs that do not fit")
    export.add_argument("--no-copy-data", action="store_true", help="keep the data file's path, do not copy it")
    export.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    args = parser.parse_args(argv)
    if args.command == "doctor":
        from .doctor import report

        return 0 if report() else 1
    if args.command == "prepare":
        from .models import load_model

        load_model(verbose=True)
        return 0
    if args.command == "claims":
        from .claims import main as claims_main

        return claims_main(args.outputs)
    if args.command == "export":
        from .export import main as export_main

        return export_main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
