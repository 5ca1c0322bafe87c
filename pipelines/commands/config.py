"""`kubetune config schema` and `kubetune config validate FILE [FILE ...]`."""

import json
import sys

from components.common.config import ConfigError, json_schema, load_config


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("schema", help="Print the JSON schema of the config file.")
    validate = sub.add_parser("validate", help="Check config files against the schema (each one is reported; "
                                               "the exit status is 2 when any is invalid).")
    validate.add_argument("files", nargs="+", metavar="FILE")


def run(args) -> int:
    if args.action == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    invalid = 0
    for file in args.files:
        try:
            cfg = load_config(file)
        except ConfigError as e:
            invalid += 1
            print(f"kubetune config: error: {e}", file=sys.stderr)
            continue
        print(f"{file}: valid (model {cfg.model.name}, method {cfg.train.method}, "
              f"{len(cfg.data.sources)} data source(s))")
    return 2 if invalid else 0
