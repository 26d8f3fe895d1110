"""Nightly re-index for cron: update an index from its data lake and log one summary line.

Example crontab line (02:30 every night)::

    30 2 * * * /opt/grdr/.venv/bin/python -m grdr_jobs.nightly_update /data/index >> /var/log/grdr-nightly.log 2>&1

Exits with status 0 when the update published a version or found the index up to
date, and 1 when it failed; the work of a failed update is kept, so the next run
resumes it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from grdr_core.errors import GrdrError
from grdr_core.versions import DEFAULT_KEEP

logger = logging.getLogger("grdr_jobs.nightly_update")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grdr-nightly-update", description=__doc__.splitlines()[0])
    parser.add_argument("index", help="index root to update: a local folder or a URL (s3://...)")
    parser.add_argument("input", nargs="?", default=None, help="input folder or URL [default: the input root recorded in the index]")
    parser.add_argument("--model", default=None, help="CLIP model with the index's encoder weights [default: the recorded encoder]")
    parser.add_argument("--device", default="cpu", help="torch device for the image encoder [default: cpu]")
    parser.add_argument("--workers", type=int, default=None, help="decoder worker processes [default: number of CPUs]")
    parser.add_argument("--work-dir", default=None, help="folder for unfinished work [default: .NAME.grdr-update beside the index]")
    parser.add_argument("--keep-versions", type=int, default=DEFAULT_KEEP, help=f"versions to keep after publishing [default: {DEFAULT_KEEP}]")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step, not only warnings and the summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one update and return the exit status: 0 when it succeeded, 1 when it failed."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logger.setLevel(logging.INFO)
    from grdr_core.update import UpdateConfig, update_index

    try:
        overrides = {"workers": args.workers} if args.workers is not None else {}
        config = UpdateConfig(
            index_dir=args.index,
            input_root=args.input,
            model=args.model,
            device=args.device,
            work_dir=args.work_dir,
            keep_versions=args.keep_versions,
            **overrides,
        )
        summary = update_index(config)
    except GrdrError as exc:
        logger.error("Nightly update of %s failed: %s", args.index, exc)
        return 1
    counts = " ".join(f"{name}={n}" for name, n in summary.counts().items())
    outcome = "up to date" if summary.up_to_date else f"published {summary.version}"
    logger.info(
        "Nightly update of %s: %s (base %s); %s; %d of %d files indexed; %.1f s",
        args.index, outcome, summary.base_version, counts, summary.indexed, summary.discovered, summary.seconds,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
