"""The map stage of ``grdr-index build`` on Apache Beam.

The pipeline is three steps: the driver's list of unfinished units, a reshuffle that
spreads them over the workers, and a DoFn that decodes and encodes each unit with
``grdr_core.stages.UnitEncoder`` and writes it to the work directory. Elements are units
(file paths and ids), never decoded frames. Everything else (planning, merging the
units, semantic IDs, the trie and publishing) runs in the driver, as with every engine.

Run it through the CLI, ``grdr-index build INPUT --out OUT --engine beam [Beam options]``,
or from Python with ``run(argv)``, which takes the same arguments. Options that the CLI
does not know go to Beam's ``PipelineOptions`` (``--runner``, ``--setup_file``,
``--num_workers``, ``--direct_running_mode``, ...). The work directory must be readable
by the driver and every worker: on a cluster, put ``--work-dir`` on shared storage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from grdr_core.errors import InvalidInputError
from grdr_core.stages import MapSettings, UnitEncoder, WorkUnit

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "grdr"


class EncodeUnitsFn(beam.DoFn):
    """Decode and encode whole units; the encoder and decoder pool live as long as the DoFn.

    Pickles small: it holds only the settings, and loads the encoder in ``setup()`` from
    the model name or path they give.
    """

    def __init__(self, settings: MapSettings) -> None:
        self._settings = settings
        self._unit_encoder: UnitEncoder | None = None

    def setup(self) -> None:
        import torch

        # Beam usually runs one SDK worker process per core, so one encoder thread each, as Ray
        # gives each actor. Without this every worker starts a thread per core, and the
        # threads of all workers compete for the same cores.
        torch.set_num_threads(1)
        self._unit_encoder = UnitEncoder(self._settings)

    def process(self, unit: WorkUnit) -> Iterator[tuple[int, dict[str, int]]]:
        assert self._unit_encoder is not None
        for result in self._unit_encoder.run([unit]):
            for status, count in result.status_counts.items():
                Metrics.counter(METRICS_NAMESPACE, f"files_{status}").inc(count)
            Metrics.counter(METRICS_NAMESPACE, "units").inc()
            yield result.number, result.status_counts

    def teardown(self) -> None:
        if self._unit_encoder is not None:
            self._unit_encoder.close()
            self._unit_encoder = None


def beam_map_runner(pipeline_args: Sequence[str]):
    """Return a map runner for ``grdr_core.build.build_index`` that runs a Beam pipeline."""
    options = _checked_options(list(pipeline_args))

    def run_units(settings: MapSettings, units: list[WorkUnit]) -> None:
        logger.info("Running the map stage of %d units on Beam (%s)", len(units), " ".join(pipeline_args) or "DirectRunner")
        try:
            pipeline = beam.Pipeline(options=options)
        except ValueError as exc:  # an unknown --runner
            raise InvalidInputError(f"Cannot start the Beam pipeline: {exc}") from exc
        _ = (
            pipeline
            | "List unfinished units" >> beam.Create(units)
            | "Spread units over workers" >> beam.Reshuffle()
            | "Decode and encode units" >> beam.ParDo(EncodeUnitsFn(settings))
        )
        result = pipeline.run()
        result.wait_until_finish()
        _log_counters(result)

    return run_units


def _checked_options(args: list[str]) -> PipelineOptions:
    """Parse Beam options, raising one-line errors where Beam would only warn or exit."""
    options = PipelineOptions(args)
    try:
        known = options.get_all_options(drop_default=False)
    except SystemExit as exc:  # argparse exits on an invalid value, e.g. --direct_num_workers=abc
        raise InvalidInputError(f"Invalid Beam options {' '.join(args)}") from exc
    for arg in args:
        if not arg.startswith("--"):
            raise InvalidInputError(f"Unexpected argument {arg!r}: write Beam options as --name=value")
        name = arg[2:].split("=", 1)[0]
        if name not in known:
            # Beam itself only logs "Discarding unparseable args", so a misspelt --runner would
            # silently run the pipeline on the driver.
            raise InvalidInputError(f"Unknown Beam option --{name}; see the Beam pipeline options of your runner")
    return options


def _log_counters(result: Any) -> None:
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    except (AttributeError, KeyError, NotImplementedError):
        return  # a runner without metrics support
    totals: dict[str, int] = {}
    for counter in counters:
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(counter.committed or 0)
    logger.info("Beam counters: %s", ", ".join(f"{name}={value}" for name, value in sorted(totals.items())))


def run(argv: Sequence[str] | None = None) -> None:
    """Run ``grdr-index build`` with ``--engine beam``; ``argv`` are the build's arguments."""
    from grdr_jobs.cli import main

    argv = list(argv or [])
    if "--engine" in argv:
        raise InvalidInputError("run() always uses the Beam engine; leave out --engine")
    main(["build", *argv, "--engine", "beam"])


if __name__ == "__main__":
    import sys

    run(sys.argv[1:])
