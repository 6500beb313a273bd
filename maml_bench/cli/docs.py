"""`maml-bench docs`: regenerate the numbers in README.md and docs/ from the committed records
and results files (`maml_bench/report/docs.py` finds the markers and computes them), or with
--check list the pages whose numbers differ."""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from maml_bench.cli.common import existing_dir
from maml_bench.errors import UserError


def add_parser(sub: typing.Any) -> None:
    text = ("regenerate the numbers in README.md and docs/ from the committed records and "
            "results files: every table and value between a '<!-- table: ... -->', "
            "'<!-- value: ... -->', '<!-- include: ... -->' or '<!-- cell: ... -->' marker and "
            "'<!-- end -->' (maml_bench/report/docs.py says how to write one)")
    p = sub.add_parser("docs", help="regenerate the docs' numbers from results/",
                       description=text[0].upper() + text[1:] + ".")
    p.add_argument("--check", action="store_true",
                   help="write nothing: list the pages whose numbers differ from the records "
                   "and exit 1 if any does (CI)")
    p.add_argument("--repo", type=existing_dir, default=Path("."), metavar="DIR",
                   help="the checkout holding README.md, docs/ and results/ (default: here)")


def cmd_docs(args: argparse.Namespace) -> int:
    from maml_bench.report.docs import pages, sync_docs

    if not pages(args.repo):
        raise UserError(f"{args.repo} holds neither README.md nor docs/*.md; run this in the "
                        "checkout or give --repo DIR")
    stale = sync_docs(args.repo, write=not args.check)
    if args.check and stale:
        print(f"maml-bench: {len(stale)} page(s) differ from the records; run `maml-bench docs` "
              "and commit the pages", file=sys.stderr)
        return 1
    if not stale:
        print("every page's numbers match the records")
    return 0
