"""Runs the caption job (with the fake models of tests/support/fakes.py) and kills its own process with SIGKILL at a
chosen moment (for tests/integration/test_caption_resume.py).

    python tests/support/kill_during.py expansion|captioning|final_write CAPTION_JOB_ARGS...

expansion: on the 3rd archive entry; captioning: on the 3rd caption batch; final_write: right after the first
output shard is renamed to its final name (the other shards and the checkpoint's removal never happen).
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


def _on_call(owner, name, call_number):
    original = getattr(owner, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call_number:
            _kill()
        return original(*args, **kwargs)
    setattr(owner, name, wrapper)


def main():
    moment, args = sys.argv[1], sys.argv[2:]
    if moment == "expansion":
        from beam_jobs.caption.archives.tar import TarReader
        _on_call(TarReader, "_entry_event", 3)  # pylint: disable=protected-access
    elif moment == "captioning":
        from tests.support.fakes import FakeCaptionHandler
        _on_call(FakeCaptionHandler, "run_inference", 3)
    elif moment == "final_write":
        from apache_beam.io.filesystems import FileSystems

        from schemas import tables
        original = FileSystems.rename

        def rename(sources, destinations):
            original(sources, destinations)
            if any(tables.shard_run(os.path.basename(path)) for path in destinations):
                _kill()
        FileSystems.rename = staticmethod(rename)
    else:
        raise SystemExit(f"unknown moment {moment}")
    from tests.support import fakes
    sys.exit(fakes.main(["caption", *args]))


if __name__ == "__main__":
    main()
