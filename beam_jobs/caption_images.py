"""``python -m beam_jobs.caption_images``: the caption job (`beam_jobs.caption.job`, also ``imcap-caption``)."""
import sys

from beam_jobs.caption.job import main, run  # noqa: F401  (the job's names, as this module has always had them)

if __name__ == "__main__":
    sys.exit(main())
