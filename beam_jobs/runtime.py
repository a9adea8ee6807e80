"""What every job of `beam_jobs` shares: Beam option handling, the local default runner, the end-of-run report.

Runner default: without ``--runner`` the jobs run on `LocalRunner`, Beam's in-process portable runner (the
engine the DirectRunner itself uses for batch pipelines). It is chosen explicitly because Beam 2.77's DirectRunner
first tries to download and start the Prism runner, which needs internet access and behaves differently.
``--direct_running_mode=multi_processing --direct_num_workers=N`` runs it with N worker processes. Any other
runner (``--runner=DirectRunner``, ``FlinkRunner``, ``DataflowRunner``, ``PortableRunner``) and all its options
pass through unchanged.
"""
import argparse
import dataclasses
import logging
import sys
import time
import typing

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import fn_runner

from schemas import images, tables
from trainer import cli

LOCAL_RUNNER = "beam_jobs.runtime.LocalRunner"
METRICS_NAMESPACE = "imcap"


class LocalRunner(fn_runner.FnApiRunner):
    """Beam's FnApiRunner, given the pipeline options the way the DirectRunner gives them (no Prism attempt)."""

    def run_pipeline(self, pipeline, options):
        from apache_beam.portability.api import beam_provision_api_pb2
        from apache_beam.runners.portability.portable_runner import JobServiceHandle
        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        self._provision_info = fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        return super().run_pipeline(pipeline, options)


def _beam_option_parser():
    """The parser Beam builds from every PipelineOptions class (as `PipelineOptions.get_all_options` does)."""
    # Beam's own parser class: the option classes call its add_value_provider_argument
    from apache_beam.options.pipeline_options import _BeamArgumentParser
    parser = _BeamArgumentParser(allow_abbrev=False)
    for options_class in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        options_class._add_argparse_args(parser)  # pylint: disable=protected-access
    return parser


def pipeline_options(beam_args: list[str], known_job_flags=(), stray_hint: str = cli.STRAY_HINT) -> PipelineOptions:
    """PipelineOptions from the arguments the job did not recognise. Dashed spellings of Beam's flags are accepted
    (``--direct-num-workers``); a flag no Beam option knows, and any stray value (an unquoted glob the shell
    expanded: Beam would silently drop it), fail fast with a message naming them."""
    parser = _beam_option_parser()
    known = set(parser._option_string_actions)  # pylint: disable=protected-access
    beam_args = cli.dashes_to_underscores(list(beam_args), known)
    _, extras = parser.parse_known_args(beam_args)
    if extras:
        message = cli.unrecognized(extras, known | set(known_job_flags), stray_hint)
        raise ValueError(message.replace("(see --help)", "(neither a flag of this job nor a Beam option; see --help)"))
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = LOCAL_RUNNER
    return options


def parse_job_args(parser: cli.ArgumentParser, argv=None) -> tuple[argparse.Namespace, list[str]]:
    """(the job's flags, the Beam pipeline options): what the job's parser does not take must be Beam's, or the
    command fails as argparse does (usage, the message, exit status 2)."""
    beam_flags = set(_beam_option_parser()._option_string_actions)  # pylint: disable=protected-access
    argv = sys.argv[1:] if argv is None else list(argv)
    parser.check_flags(argv, also_known=beam_flags)
    args, beam_args = parser.parse_known_args(argv)
    try:
        pipeline_options(beam_args, parser.option_strings, parser.stray_hint)
    except ValueError as error:
        parser.error(str(error))
    return args, cli.dashes_to_underscores(beam_args, beam_flags)


@dataclasses.dataclass
class Job:
    """A job of `beam_jobs`: its parts, and the life every job shares (`run`, `main`).

    ``parse_args(argv) -> (args, beam_args)``; ``prepare(args, models=...) -> config`` checks everything on the
    launching machine and raises ValueError/FileNotFoundError with what to fix; ``build_pipeline(pipeline,
    config)``; ``summarize(counters, config) -> str``. A job module says ``run, main = JOB.run, JOB.main``; a test
    that replaces a part patches the attribute of ``JOB`` (the module's function is not looked up again)."""
    title: str
    parse_args: typing.Callable
    prepare: typing.Callable
    build_pipeline: typing.Callable
    summarize: typing.Callable

    def run(self, argv=None, test_pipeline=None, models=None):
        """Flags, checks, the graph, the run, the counters, the summary; returns the PipelineResult. Tests pass a
        TestPipeline, and fake `beam_jobs.models.Models` where the models are beside the point."""
        args, beam_args = self.parse_args(argv)
        options = pipeline_options(beam_args)  # before prepare: a mistyped flag fails before any model is loaded
        config = self.prepare(args) if models is None else self.prepare(args, models=models)
        pipeline = test_pipeline or beam.Pipeline(options=options)
        self.build_pipeline(pipeline, config)
        result = pipeline.run()
        result.wait_until_finish()
        counters = log_counters(result, self.title)
        logging.info("%s", self.summarize(counters, config))
        return result

    def main(self, argv=None, *, models=None, tensorflow: bool = True) -> int:
        """The command line: errors a user can fix are one log line and exit status 2.

        ``tensorflow``: import TensorFlow first, with its start-up noise silenced (the jobs' models need it; the
        fake models of the tests do not)."""
        setup_logging()
        if tensorflow:
            cli.quiet_tensorflow()
        return cli.exit_status(lambda: self.run(argv, models=models))


def metric_counters(result, namespace: str = METRICS_NAMESPACE) -> dict[str, int]:
    """The job's counters by name (committed values where the runner has them, else attempted)."""
    counters = {}
    try:
        query = result.metrics().query(MetricsFilter().with_namespace(namespace))
    except Exception:  # some runners do not report metrics to the launcher
        return counters
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + int(value or 0)
    return dict(sorted(counters.items()))


def log_counters(result, title: str, namespace: str = METRICS_NAMESPACE) -> dict[str, int]:
    counters = metric_counters(result, namespace)
    if counters:
        width = max(len(name) for name in counters)
        lines = "\n".join(f"  {name:<{width}}  {value:>10,}" for name, value in counters.items())
        logging.info("%s counters:\n%s", title, lines)
    return counters


class ProgressLog:
    """Logs a worker's progress ``first_s`` seconds after its first item, then every ``interval_s`` seconds (Beam's
    local runners show none by themselves)."""

    def __init__(self, what: str, interval_s: float = 30.0, first_s: float = 10.0):
        self._what = what
        self._interval_s = interval_s
        self._count = 0
        self._start = self._next = None
        self._first_s = min(first_s, interval_s)

    def add(self, count: int = 1, total: int | None = None) -> None:
        """Counts; with ``total`` (the job's input count, once known), the log says "n of N" and an ETA."""
        now = time.monotonic()
        if self._start is None:
            self._start, self._next = now, now + self._first_s
        self._count += count
        if now >= self._next:
            self._next = now + self._interval_s
            rate = self._count / max(now - self._start, 1e-9)
            if total:
                left = max(total - self._count, 0) / max(rate, 1e-9)
                logging.info("%s: %s of %s (this worker), %.1f/s, ETA %s", self._what, f"{self._count:,}",
                             f"{total:,}", rate, _duration(left))
            else:
                logging.info("%s: %s on this worker so far (%.1f/s)", self._what, f"{self._count:,}", rate)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


def counter(name: str):
    return beam.metrics.Metrics.counter(METRICS_NAMESPACE, name)


def internal_error_row(uri: str, error: BaseException):
    """The error row of an input whose handling raised an unexpected exception: the job goes on without it.

    Safe on any thread (it counts nothing: Beam counters only count on the bundle's own thread; the rows are
    counted by class where they are written)."""
    logging.warning("internal error on %s", uri, exc_info=error)
    return tables.error_row(uri, images.INTERNAL_ERROR, f"{images.describe_error(error)} (an unexpected failure while "
                                                        "handling this input; the job went on without it)")


def parse_key_value(text: str) -> tuple[str, str]:
    """argparse type for NAME=VALUE flags."""
    name, separator, value = text.partition("=")
    if not separator or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, value


positive_int, non_negative_int = cli.positive_int, cli.non_negative_int


def setup_logging(level: int = logging.INFO) -> None:
    cli.setup_logging(level)
    # Beam's portable runner logs every stage at INFO; keep the job's own messages readable.
    for noisy in ("apache_beam.runners.portability.fn_api_runner", "apache_beam.runners.worker",
                  "apache_beam.io.filebasedsink", "apache_beam.runners.portability.local_job_service",
                  "apache_beam.ml.inference.base", "apache_beam.internal.gcp", "apache_beam.io.iobase",
                  "apache_beam.transforms.util"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def first_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""
