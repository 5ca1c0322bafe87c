"""`kubetune config schema` and `kubetune config validate FILE`."""

import json

from components.common.config import json_schema, load_config


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("schema", help="Print the JSON schema of the config file.")
    validate = sub.add_parser("validate", help="Check a config file against the schema.")
    validate.add_argument("file")


def run(args) -> int:
    if args.action == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    cfg = load_config(args.file)
    print(f"{args.file}: valid (model {cfg.model.name}, method {cfg.train.method}, "
          f"{len(cfg.data.sources)} data source(s))")
    return 0
