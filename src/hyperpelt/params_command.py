"""The ``hyperpelt params`` command: its arguments and its call into ``accounting``."""

from __future__ import annotations

import argparse
import json

from .errors import UserError


def cmd_params(args) -> int:
    """Count the parameters of a method on a backbone, as the papers report them."""
    from .config import parse_override
    from .quiet import quiet_libraries

    quiet_libraries()
    from .accounting import count_parameters, describe_counts, paper_table

    if args.paper_table:
        print(paper_table())
        return 0
    if not args.model:
        raise UserError("params needs --model (or --paper-table)")
    method = {".".join(k): v for k, v in map(parse_override, args.option or [])}
    method.update({"name": args.method} if args.method else {})
    counts = count_parameters(args.model, method, args.tasks)
    print(json.dumps(counts) if args.json else describe_counts(args.model, args.tasks, counts))
    return 0


def add_params_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("params", help="count a method's parameters on a backbone",
                       description=cmd_params.__doc__)
    p.set_defaults(func=cmd_params)
    p.add_argument("--model", help="t5-small, t5-base, t5-large, t5-tiny, minilm-l6, a hub id or a path")
    p.add_argument("--method", help="method name (see README); default: the default method, hyperpelt")
    p.add_argument("--tasks", type=int, default=8, help="number of tasks trained together (default: 8, GLUE)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="e.g. adapter_dim=24")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--paper-table", action="store_true", help="the papers' figures beside ours (markdown)")
