"""Renders the caption job's Parquet outputs as one self-contained HTML page, for a person to look at.

    imcap-gallery --captions out/captions --output_file gallery.html [--limit 200]

(also installed as ``imcap-gallery``). Caption rows are shown as thumbnails (embedded as JPEG data URIs, so the page
needs nothing else) with their caption, log-probability and size; error rows are listed in a table with their
class and message. ``--captions`` is the caption job's output directory (both tables are read), one table's folder,
or a glob of Parquet files (told apart by their schema, `schemas.tables`). Images inside archives are read by streaming
each archive once.
"""
import argparse
import base64
import collections
import html
import io
import os
import posixpath
import sys

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from tqdm import tqdm

from beam_jobs import naming
from beam_jobs.caption import archives
from schemas import fileio, images, tables
from trainer import cli, pictures

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
h1 {{ font-size: 1.4rem; }} .summary {{ color: #555; margin-bottom: 1rem; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax({size}px, 1fr)); gap: 1rem; }}
figure {{ margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: .5rem; background: #fafafa; }}
figure img {{ width: 100%; height: auto; border-radius: 4px; }}
figcaption .caption {{ font-weight: 600; margin: .3rem 0; }}
figcaption .meta {{ font-size: .75rem; color: #777; word-break: break-all; }}
figure:has(details[open]) {{ grid-column: 1 / -1; }}
figure img.looks {{ width: auto; max-width: 100%; }}
details summary {{ font-size: .8rem; color: #357; cursor: pointer; }}
.missing {{ height: {size}px; display: flex; align-items: center; justify-content: center; color: #999; }}
table {{ border-collapse: collapse; margin-top: .5rem; font-size: .85rem; }}
td, th {{ border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; vertical-align: top; }}
</style></head><body>
<h1>{title}</h1>
<div class="summary">{summary}</div>
<div class="grid">
{cards}
</div>
<h2>Errors ({error_count})</h2>
{errors}
</body></html>
"""


def _parquet_files(given: str) -> list[str]:
    """The Parquet files --captions means: the caption job's output directory (both of its tables), one table's
    folder, or a glob of files."""
    if not naming.has_glob_characters(given):
        base = given.rstrip("/")
        in_tables = (fileio.glob(posixpath.join(tables.table_dir(base, tables.CAPTIONS_TABLE), "*.parquet"))
                     + fileio.glob(posixpath.join(tables.table_dir(base, tables.ERRORS_TABLE), "*.parquet")))
        if in_tables:
            return in_tables
        in_folder = fileio.glob(posixpath.join(base, "*.parquet"))
        if in_folder:
            return in_folder
    return [path for path in fileio.glob(given) if "://" in path or not os.path.isdir(path)]


def read_outputs(given: str) -> tuple[list[dict], list[dict]]:
    """(caption rows, error rows) of the caption job's output directory, a table's folder or a glob of files (told
    apart by their schema)."""
    paths = _parquet_files(given)
    if not paths:
        raise FileNotFoundError(f"--captions {given}: no Parquet files there; give the caption job's --output_dir "
                                "(or a glob of its shards)")
    captions, errors = [], []
    for path in sorted(paths):
        with FileSystems.open(path) as handle:
            table = pq.read_table(io.BytesIO(handle.read()))
        (errors if tables.is_error_table(table.schema) else captions).extend(table.to_pylist())
    return (sorted(captions, key=lambda r: r[tables.IMAGE_URI]), sorted(errors, key=lambda r: r[tables.IMAGE_URI]))


def _thumbnail(data: bytes, size: int, looks=None):
    """A JPEG data URI of the image; with ``looks`` (words, attention rows) also the PNG data URI of its attention
    panels (`trainer.pictures`): (thumbnail, panels or None)."""
    image = images.decode_image(data, draft_size=max(size, pictures.PANEL))
    panels = None
    if looks is not None:
        words, attention = looks
        try:
            grid = round(len(attention[0]) ** 0.5)
            panels = pictures.png_data_uri(pictures.attention_panels(image, words, attention, (grid, grid)))
        except (ValueError, TypeError, IndexError):  # a malformed attention column: the photo is still shown
            panels = None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), panels


def _where(uri: str) -> tuple[str | None, str]:
    """(archive to stream, or None for a file, path) of an output URI: a file whose own name reads as a member
    (``x.zip!p.jpg``) is that file; otherwise the first archive that exists among the ways to read it."""
    path = fileio.path_of(uri)
    if FileSystems.exists(path):
        return None, path
    for archive, _ in naming.member_splits(uri):
        if FileSystems.exists(fileio.path_of(archive)):
            return archive, fileio.path_of(archive)
    return None, path


def thumbnails(uris: list[str], size: int, looks: dict | None = None) -> dict:
    """uri -> (thumbnail data URI, attention panels data URI or None), or None where the image cannot be read any
    more; each archive is streamed once. ``looks``: uri -> (words, attention rows) of the rows that have them."""
    looks = looks or {}
    by_archive = collections.defaultdict(set)
    paths = {}
    for uri in uris:
        archive, path = _where(uri)
        by_archive[archive].add(uri)
        paths[archive or uri] = path
    out = {}
    with tqdm(total=len(uris), desc="thumbnails", unit="img", disable=None) as progress:  # no bar in a log file
        for uri in sorted(by_archive.pop(None, ())):
            try:
                out[uri] = _thumbnail(fileio.read_bytes(paths[uri]), size, looks.get(uri))
            except Exception:  # moved, deleted or unreadable since the job ran: shown as unavailable
                out[uri] = None
            progress.update()
        for archive, wanted in sorted(by_archive.items()):
            try:
                for event in archives.read_archive(archive, paths[archive]):
                    if isinstance(event, archives.MemberData) and event.uri in wanted:
                        try:
                            out[event.uri] = _thumbnail(event.data, size, looks.get(event.uri))
                        except images.ImageError:
                            out[event.uri] = None
                        progress.update()
            except Exception:  # an archive changed since the job ran: its images are shown as unavailable
                pass
    return out


def render(caption_rows: list[dict], error_rows: list[dict], limit: int, size: int, title: str) -> str:
    shown = caption_rows[:limit]
    looks = {row[tables.IMAGE_URI]: (row[tables.CAPTION].split(), row[tables.ATTENTION]) for row in shown
             if row.get(tables.ATTENTION)}
    made = thumbnails([row[tables.IMAGE_URI] for row in shown], size, looks)
    cards = []
    for row in shown:
        thumbnail, panels = made.get(row[tables.IMAGE_URI]) or (None, None)
        image_html = (f'<img src="{thumbnail}" alt="{html.escape(row[tables.CAPTION])}">' if thumbnail
                      else '<div class="missing">image unavailable</div>')
        looks_html = (f'<details><summary>where each word looked</summary><img class="looks" src="{panels}" '
                      f'alt="attention maps"></details>' if panels else "")
        cards.append(
            f"<figure>{image_html}<figcaption><div class=\"caption\">{html.escape(row[tables.CAPTION])}</div>"
            f"<div class=\"meta\">log p {row[tables.LOG_PROB]:.2f} · {row[tables.WIDTH]}×{row[tables.HEIGHT]} · "
            f"{html.escape(row[tables.IMAGE_URI])}</div>{looks_html}</figcaption></figure>")
    by_class = collections.Counter(row[tables.ERROR] for row in error_rows)
    models = sorted({row[tables.MODEL_ID] for row in caption_rows})
    summary = (f"{len(caption_rows):,} captioned images (showing {len(shown):,}); {len(error_rows):,} errors"
               f"{' (' + ', '.join(f'{k}: {v}' for k, v in sorted(by_class.items())) + ')' if by_class else ''}; "
               f"model {', '.join(models) or '-'}")
    if error_rows:
        error_html = "<table><tr><th>image</th><th>error</th><th>message</th></tr>" + "".join(
            f"<tr><td>{html.escape(r[tables.IMAGE_URI])}</td><td>{html.escape(r[tables.ERROR])}</td>"
            f"<td>{html.escape(r[tables.MESSAGE])}</td></tr>" for r in error_rows[:limit * 5]) + "</table>"
    else:
        error_html = "<p>None.</p>"
    return PAGE.format(title=html.escape(title), summary=html.escape(summary), size=size, cards="\n".join(cards),
                       error_count=len(error_rows), errors=error_html)


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog="imcap-gallery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", required=True, metavar="DIR",
                        help="the caption job's --output_dir (or a glob of Parquet files, e.g. "
                             "'out/*/captions/*.parquet')")
    parser.add_argument("--output_file", "--output", dest="output", required=True, metavar="FILE",
                        help="the HTML file to write (any filesystem)")
    parser.add_argument("--limit", type=cli.positive_int, default=200, help="captioned images to show")
    parser.add_argument("--thumbnail_size", type=cli.positive_int, default=192,
                        help="the longer side of each photo on the page, in pixels")
    parser.add_argument("--title", default="imcap captions", help="the page's title")
    args = parser.parse_args(argv)
    return cli.exit_status(lambda: write_gallery(args))


def write_gallery(args: argparse.Namespace) -> None:
    caption_rows, error_rows = read_outputs(args.captions)
    page = render(caption_rows, error_rows, args.limit, args.thumbnail_size, args.title)
    with FileSystems.create(args.output, mime_type="text/html") as handle:
        handle.write(page.encode("utf-8"))
    print(f"wrote {args.output}: {min(len(caption_rows), args.limit)} of {len(caption_rows)} captions, "
          f"{len(error_rows)} errors")


if __name__ == "__main__":
    sys.exit(main())
