"""``python -m beam_jobs.extract_features``: the extract job (`beam_jobs.extract.job`, also ``imcap-extract``)."""
import sys

from beam_jobs.extract.job import main, run  # noqa: F401  (the job's names, as this module has always had them)

if __name__ == "__main__":
    sys.exit(main())
