"""Real photos (Flickr8k, where ../shared has it) through the caption job: loose, in a tar, a tar.gz and a zip, the
same photo gets the same caption and size in every form."""
import os
import tarfile
import zipfile

from beam_jobs.caption import job as caption_job
from tests.conftest import FLICKR8K_DIR, local_test_pipeline, requires_flickr8k
from tests.support.builders import argv, check_every_input_once, read_outputs
from tests.support.fakes import FAKE_MODELS


@requires_flickr8k()
def test_the_same_photo_gets_the_same_row_loose_and_in_every_archive(fake_bundle, tmp_path):
    photos_dir = os.path.normpath(os.path.join(FLICKR8K_DIR, "Flicker8k_Dataset"))  # URIs are normalized
    names = sorted(os.listdir(photos_dir))[:6]
    paths = [os.path.join(photos_dir, name) for name in names]
    listed = tmp_path / "photos.txt"
    listed.write_text("".join(f"{path}\n" for path in paths))
    archives = {"p.tar": "w", "p.tar.gz": "w:gz"}
    for archive, mode in archives.items():
        with tarfile.open(tmp_path / archive, mode) as handle:
            for path, name in zip(paths, names):
                handle.add(path, arcname=f"d/{name}")
    with zipfile.ZipFile(tmp_path / "p.zip", "w", zipfile.ZIP_DEFLATED) as handle:
        for path, name in zip(paths, names):
            handle.write(path, arcname=f"d/{name}")
    prefix = str(tmp_path / "out" / "c")
    inputs = [str(listed)] + [str(tmp_path / archive) for archive in (*archives, "p.zip")]
    caption_job.run(argv(inputs, fake_bundle, prefix), test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    captions, errors = read_outputs(prefix)
    expected = {path: None for path in paths}
    for archive in (*archives, "p.zip"):
        expected.update({f"{tmp_path / archive}!d/{name}": None for name in names})
    check_every_input_once(captions, errors, expected)
    by_name = {}
    for row in captions:
        name = os.path.basename(row["image_uri"])
        by_name.setdefault(name, set()).add((row["caption"], round(row["log_prob"], 3), row["width"], row["height"]))
    assert all(len(outcomes) == 1 for outcomes in by_name.values()), by_name
    assert len({outcome for outcomes in by_name.values() for outcome in outcomes}) == len(names)  # one per photo
