"""What every imcap command shares at start-up: logging, and a TensorFlow that does not shout.

TensorFlow's C++ layers print start-up lines straight to the process's stderr before any logging is set up (``oneDNN
custom operations are on``, ``Could not find cuda drivers``, ``E0000 ... failed call to cuInit`` on a machine without a
GPU, and ``oneDNN supports DT_HALF only ...`` at the first float16 op): alarming, and noise in every log.
`quiet_tensorflow` imports TensorFlow and Keras and initializes the devices with that stderr redirected (its lines are
shown if the import fails); set ``IMCAP_VERBOSE=1`` to see them. Beam's import logs ``apitools not found`` when the GCP
extras are absent, which only matters to gs:// users (who install ``imcap[gcp]``); `schemas.logs.KnownNoise` drops it.
"""
import argparse
import difflib
import logging
import os
import sys
import tempfile

from schemas.logs import install_noise_filter

VERBOSE_ENV = "IMCAP_VERBOSE"
STRAY_HINT = ("an unquoted glob the shell expanded, or a flag's value after a space in a place that takes none? "
              "Quote globs ('photos/*.jpg') or give every path after one flag that takes several")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
_quiet_done = False


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false", "no")


def quiet_tensorflow() -> None:
    """Imports TensorFlow and Keras and initializes the devices with C++ start-up output silenced (once)."""
    global _quiet_done
    if _quiet_done or verbose():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import importlib
            importlib.import_module("keras")
            tf = importlib.import_module("tensorflow")
            tf.config.list_physical_devices()
            # The first float16 op of a process prints "oneDNN supports DT_HALF only on platforms with AVX-512"
            # (even on CPUs that have it); the spatial grids are float16, so that line is said here, once.
            tf.cast(tf.constant([0.0], tf.float16), tf.float32)
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    _quiet_done = True


def setup_logging(level: int = logging.INFO, fmt: str = LOG_FORMAT) -> None:
    """The root logger at ``level`` with one format, even if a library configured it while being imported."""
    # force: Beam's GCP modules log "apitools not found" at import time, which configures the root logger at WARNING
    logging.basicConfig(level=level, format=fmt, force=True)
    install_noise_filter()


def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


def fraction(text: str) -> float:
    """A flag's value in [0, 1): a dropout rate, a decay factor, label smoothing."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1), got {value}")
    return value


EXPECTED_FAILURES = (ValueError, FileNotFoundError)  # what a user can fix: a bad flag, a missing file, ...


def exit_status(action) -> int:
    """Runs a command's ``action()`` and returns its exit status: an int it returns is the status, anything else
    (None, a summary, a result) is 0; 2 with the error as one log line (no traceback) when it raises one of
    `EXPECTED_FAILURES`."""
    try:
        status = action()
    except EXPECTED_FAILURES as error:
        logging.error("%s", error)
        return 2
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


positive_int = _int_at_least(1, "a positive integer")  # argparse types of every command
non_negative_int = _int_at_least(0, "an integer >= 0")


def dashes_to_underscores(args: list[str], known) -> list[str]:
    """``--beam-width 3`` and ``--beam-width=3`` as ``--beam_width``, for every flag whose underscored spelling is
    in ``known`` (option strings); anything else is left as it is. Stops at ``--``."""
    out = []
    for position, arg in enumerate(args):
        if arg == "--":
            return out + args[position:]
        name, equals, value = arg.partition("=")
        if name.startswith("--") and "-" in name[2:] and name not in known:
            underscored = "--" + name[2:].replace("-", "_")
            if underscored in known:
                arg = underscored + equals + value
        out.append(arg)
    return out


def unrecognized(extras: list[str], known, hint: str = STRAY_HINT) -> str:
    """The message for arguments no parser took: unknown flags (with the closest real flag) and stray values."""
    flags, strays, position, parts_first = [], [], 0, []
    while position < len(extras):
        arg = extras[position]
        if arg == "--":
            parts_first = ["'--' ends the flags, and this command takes no arguments after them"]
            strays.extend(extras[position + 1:])
            break
        if arg.startswith("-") and arg != "-":
            flags.append(arg.partition("=")[0])
            # an unknown flag's value, if it has one, is not a stray path of its own
            if "=" not in arg and position + 1 < len(extras) and not extras[position + 1].startswith("-"):
                position += 1
        else:
            strays.append(arg)
        position += 1
    parts = list(parts_first)
    for flag in flags:
        close = difflib.get_close_matches("--" + flag[2:].replace("-", "_") if flag.startswith("--") else flag,
                                          [option for option in known if option.startswith("--")], n=1, cutoff=0.75)
        parts.append(f"unrecognized flag {flag}" + (f" (did you mean {close[0]}?)" if close else ""))
    if strays:
        shown = " ".join(strays[:3]) + (f" ... ({len(strays):,} in all)" if len(strays) > 3 else "")
        parts.append(f"unexpected argument{'s' if len(strays) > 1 else ''} {shown}: {hint}")
    return "; ".join(parts) + " (see --help)"


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default, unless the help already says it (or there is none to say)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "default" in text.lower() or default in (None, False, argparse.SUPPRESS) or default == []:
            return text
        return f"{text} (default {default})".strip()


class ArgumentParser(argparse.ArgumentParser):
    """argparse with what every imcap command does: a dashed spelling of a flag (``--beam-width``) is the flag
    (``--beam_width``), an argument no flag takes fails with the closest real flag, or, for stray values (an
    unquoted glob the shell expanded), with what to do; every flag's help shows its default."""

    def __init__(self, *args, stray_hint: str = STRAY_HINT, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.stray_hint = stray_hint

    @property
    def option_strings(self) -> set:
        return set(self._option_string_actions)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(dashes_to_underscores(args, self.option_strings), namespace)

    def check_flags(self, args, also_known=()) -> None:
        """Fails (usage, message, exit 2) on a flag neither this parser nor ``also_known`` has, before anything
        else is checked: a misspelt flag is named, not reported as a missing required one."""
        known = self.option_strings | set(also_known)
        args = dashes_to_underscores(list(args), known)
        args = args[:args.index("--")] if "--" in args else args
        # as argparse: a negative number or a text with a space is a value, never a flag
        unknown = [arg for arg in args if arg.startswith("-") and arg != "-" and not _is_number(arg)
                   and " " not in arg and not self._known_or_abbreviated(arg.partition("=")[0], known)]
        if unknown:
            self.error(unrecognized(unknown, known, self.stray_hint))

    def _known_or_abbreviated(self, flag: str, known) -> bool:
        if flag in known:
            return True
        return self.allow_abbrev and flag.startswith("--") and len([k for k in known if k.startswith(flag)]) == 1

    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        self.check_flags(args)
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(unrecognized(extras, self.option_strings, self.stray_hint))
        return parsed


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
