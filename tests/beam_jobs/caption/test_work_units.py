"""One archive, many workers: archives indexed into work units of member references, read by whichever worker gets
each unit; compressed tars spilled once; WebDataset samples; resume inside an archive."""
import bz2
import gzip
import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

from beam_jobs import runtime
from beam_jobs.caption import archives
from beam_jobs.caption import job as caption_job
from beam_jobs.caption.archives import units
from schemas import images, tables
from tests.conftest import REPO_ROOT, local_test_pipeline
from tests.support import prefixfs
from tests.support.builders import argv, check_every_input_once, crash_on_third_caption_batch, read_outputs, tar_bytes
from tests.support.fakes import FAKE_MODELS

COMPRESSORS = {".tar": lambda data: data, ".tar.gz": gzip.compress, ".tar.bz2": bz2.compress,
               ".tar.xz": lzma.compress}


@pytest.fixture(scope="module")
def photos(sample_dataset):
    """The 12 sample photos' bytes, by name."""
    source = os.path.join(sample_dataset, "Flicker8k_Dataset")
    return {name: open(os.path.join(source, name), "rb").read() for name in sorted(os.listdir(source))}


def _zip_bytes(members, method=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members:
            archive.writestr(name, data, compress_type=method)
    return buffer.getvalue()


def _units_of(path, members_per_unit, spill_dir, **kwargs):
    """(units, other events) of indexing an archive, as the caption job's ExpandInputs step cuts it."""
    spill = units.SpillWriter(spill_dir, path)
    builder = units.UnitBuilder(path, b"", os.path.getsize(path), members_per_unit, spill=spill)
    made, others = [], []
    for event in units.group_samples(archives.index_archive(path, spill=spill, **kwargs), path):
        if isinstance(event, archives.MemberSpan):
            unit = builder.add(event)
            if unit:
                made.append(unit)
        else:
            others.append(event)
    last = builder.finish()
    return made + ([last] if last else []), others


def _read_units(made, path):
    return {event.uri: event for unit in made for event in archives.read_spans(unit.spans, path)}


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.bz2", ".tar.xz", ".zip"])
@pytest.mark.parametrize("members_per_unit", [1, 3, 100])
def test_every_member_once_across_units_with_the_bytes_a_whole_read_gives(suffix, members_per_unit, photos, tmp_path):
    names = list(photos)[:7]
    long_names = [f"{'deep/' * 30}{name}" for name in names[:2]]  # GNU/PAX long-name headers before a member
    members = [(name, photos[name]) for name in names] + [(long, photos[names[0]]) for long in long_names]
    path = str(tmp_path / f"batch{suffix}")
    if suffix == ".zip":
        data = _zip_bytes(members)
    else:
        data = COMPRESSORS[suffix](tar_bytes(members, fmt=tarfile.PAX_FORMAT if members_per_unit == 3
                                             else tarfile.GNU_FORMAT))
    open(path, "wb").write(data)
    made, others = _units_of(path, members_per_unit, str(tmp_path / "spill"))
    assert not others
    spans = [span.uri for unit in made for span in unit.spans]
    assert sorted(spans) == sorted(f"{path}!{name}" for name, _ in members) and len(set(spans)) == len(spans)
    assert all(len(unit.spans) <= members_per_unit for unit in made)
    assert len(made) == -(-len(members) // members_per_unit)
    whole = {event.uri: event.data for event in archives.read_archive(path)
             if isinstance(event, archives.MemberData)}
    read = _read_units(made, path)
    assert {uri: event.data for uri, event in read.items()} == whole
    spilled = os.listdir(tmp_path / "spill") if (tmp_path / "spill").exists() else []
    assert bool(spilled) == suffix.startswith(".tar.")  # only compressed tars are spilled
    assert all(units.is_spill_name(name) for name in spilled)


def test_hard_links_resolve_from_the_index(photos, tmp_path):
    name, data = next(iter(photos.items()))
    link = tarfile.TarInfo("copy.jpg")
    link.type, link.linkname = tarfile.LNKTYPE, name
    early = tarfile.TarInfo("early.jpg")
    early.type, early.linkname = tarfile.LNKTYPE, "later.jpg"
    path = str(tmp_path / "links.tar")
    open(path, "wb").write(tar_bytes([early, (name, data), link, ("later.jpg", data)]))
    made, others = _units_of(path, 1, str(tmp_path / "spill"))
    read = _read_units(made, path)
    assert read[f"{path}!copy.jpg"].data == data and read[f"{path}!{name}"].data == data
    assert [(event.uri, event.error_class) for event in others] == [(f"{path}!early.jpg", images.UNSUPPORTED_MEMBER)]


def test_a_damaged_member_in_the_middle_of_a_unit_is_its_own_row(photos, tmp_path):
    members = list(photos.items())[:5]
    data = bytearray(_zip_bytes(members, zipfile.ZIP_STORED))
    third = data.find(members[2][1])
    data[third + 100:third + 110] = bytes(10)  # the CRC-32 no longer holds
    path = str(tmp_path / "damaged.zip")
    open(path, "wb").write(bytes(data))
    made, _ = _units_of(path, 5, str(tmp_path / "spill"))
    assert len(made) == 1
    read = _read_units(made, path)
    failures = {uri: event for uri, event in read.items() if isinstance(event, archives.MemberFailure)}
    assert list(failures) == [f"{path}!{members[2][0]}"]
    assert failures[f"{path}!{members[2][0]}"].error_class == images.CORRUPT_ARCHIVE
    assert "CRC-32 mismatch" in failures[f"{path}!{members[2][0]}"].message
    assert sum(isinstance(event, archives.MemberData) for event in read.values()) == 4


def test_an_archive_changed_after_its_index_is_not_read(photos, tmp_path):
    path = str(tmp_path / "batch.tar")
    open(path, "wb").write(tar_bytes(list(photos.items())[:3]))
    made, _ = _units_of(path, 10, str(tmp_path / "spill"))
    open(path, "ab").write(bytes(1024))  # another archive under the same name
    events = list(archives.read_spans(made[0].spans, path, archive_size=made[0].archive_size))
    assert [event.error_class for event in events] == [images.READ_ERROR] * 3
    assert "changed since the job listed it" in events[0].message


@pytest.mark.integration
@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tar.bz2", ".tar.xz", ".zip"])
def test_the_job_captions_every_member_once_whatever_the_unit_size(suffix, photos, fake_bundle, tmp_path):
    members = list(photos.items())
    path = str(tmp_path / f"batch{suffix}")
    open(path, "wb").write(_zip_bytes(members) if suffix == ".zip" else COMPRESSORS[suffix](tar_bytes(members)))
    expected = {f"{path}!{name}": None for name, _ in members}
    captions = {}
    for size in ("2", "1000"):
        out = str(tmp_path / f"out{size}")
        result = caption_job.run(argv([path], fake_bundle, out, "--archive_unit_members", size),
                                    test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
        rows, errors = read_outputs(out)
        check_every_input_once(rows, errors, expected)
        captions[size] = {row[tables.IMAGE_URI]: row[tables.CAPTION] for row in rows}
        assert runtime.metric_counters(result)["archive_units"] == (6 if size == "2" else 1)
        assert sorted(os.listdir(out)) == ["captions", "errors"]  # spill files gone with the run
    assert captions["2"] == captions["1000"]


@pytest.mark.integration
def test_units_spread_over_worker_processes(photos, fake_bundle, tmp_path):
    """With 2 worker processes, the units of one archive are read by both (each worker writes its pid per image
    through the fakes' FAKE_WORKER_LOG)."""
    path = str(tmp_path / "one.tar")
    open(path, "wb").write(tar_bytes([(f"{index}-{name}", data) for index in range(4)
                                      for name, data in photos.items()]))
    log = tmp_path / "workers.log"
    out = str(tmp_path / "out")
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.fakes", "caption",
         *argv([path], fake_bundle, out, "--archive_unit_members", "4"),
         "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "FAKE_WORKER_LOG": str(log)}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    pids = [line.split()[0] for line in log.read_text().splitlines()]
    assert len(pids) == 48 and len(set(pids)) == 2, sorted(set(pids))
    shares = sorted(pids.count(pid) for pid in set(pids))
    assert shares[0] >= 0.5 * shares[1], shares
    check_every_input_once(*read_outputs(out), {f"{path}!{index}-{name}": None for index in range(4)
                                                for name in photos})


@pytest.mark.integration
@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_a_run_killed_inside_an_archive_resumes_at_member_granularity(suffix, photos, fake_bundle, tmp_path):
    members = [(f"{index}-{name}", data) for index in range(2) for name, data in photos.items()]
    path = str(tmp_path / f"one{suffix}")
    open(path, "wb").write(COMPRESSORS[suffix](tar_bytes(members)))
    out = str(tmp_path / "out")
    args = argv([path], fake_bundle, out, "--archive_unit_members", "2", "--decode_batch_size", "2",
                "--checkpoint_rows", "1", "--min_batch_size", "1", "--max_batch_size", "2")
    killed = subprocess.run([sys.executable, os.path.join("tests", "support", "kill_during.py"), "captioning", *args],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    committed = sum(1 for name in os.listdir(os.path.join(out, "checkpoint")))
    assert committed >= 1
    result = caption_job.run(args + ["--skip_existing"], test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    counters = runtime.metric_counters(result)
    assert counters["skipped_existing"] >= 2 and counters["images_captioned"] < len(members)
    check_every_input_once(*read_outputs(out), {f"{path}!{name}": None for name, _ in members})
    assert sorted(os.listdir(out)) == ["captions", "errors"]  # the killed run's spill and checkpoint removed


@pytest.mark.integration
def test_resume_inside_an_archive_on_an_object_store(photos, fake_bundle, monkeypatch):
    prefixfs.clear()
    members = list(photos.items())
    path = "prefixfs://bucket/in/one.tar.gz"
    prefixfs.put(path, gzip.compress(tar_bytes(members)))
    out = "prefixfs://bucket/out"
    args = argv([path], fake_bundle, out, "--archive_unit_members", "2", "--decode_batch_size", "2",
                "--checkpoint_rows", "1", "--min_batch_size", "1", "--max_batch_size", "2")
    crash_on_third_caption_batch(monkeypatch)
    with pytest.raises(Exception, match="simulated worker loss"):
        caption_job.run(args, test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    assert prefixfs.paths(f"{out}/beam-temp-spill-run1/")  # the spill of the compressed tar is still there
    monkeypatch.undo()
    result = caption_job.run(args + ["--skip_existing"], test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    assert runtime.metric_counters(result)["skipped_existing"] >= 2
    check_every_input_once(*read_outputs(out), {f"{path}!{name}": None for name, _ in members})
    left = [p for p in prefixfs.paths(out + "/") if "/captions/" not in p and "/errors/" not in p]
    assert left == []  # the killed run's spill and checkpoint removed


@pytest.mark.integration
def test_a_killed_runs_spill_is_removed_and_foreign_files_there_are_not(photos, fake_bundle, tmp_path):
    path = str(tmp_path / "one.tar.gz")
    open(path, "wb").write(gzip.compress(tar_bytes(list(photos.items())[:3])))
    out = tmp_path / "out"
    spill = out / "beam-temp-spill-run1"
    spill.mkdir(parents=True)
    (spill / f"{'a' * 20}-000000.bin").write_bytes(b"a killed run's spill")
    (spill / "notes.txt").write_bytes(b"someone's notes")
    caption_job.run(argv([path], fake_bundle, str(out)), test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    assert os.listdir(spill) == ["notes.txt"]
    check_every_input_once(*read_outputs(str(out)), {f"{path}!{name}": None for name in list(photos)[:3]})


# -- WebDataset shards ------------------------------------------------------------------------------------------

def _write_shards(directory, photos, shards=3, samples=4):
    """WebDataset shards written with the webdataset library's own writer; (paths, expected rows)."""
    webdataset = pytest.importorskip("webdataset")
    names = list(photos)
    paths, expected, fields = [], {}, {}
    for shard in range(shards):
        path = os.path.join(directory, f"shard-{shard:06d}.tar")
        with webdataset.TarWriter(path) as writer:
            for index in range(samples):
                key = f"{shard:03d}{index:04d}"
                photo = names[(shard * samples + index) % len(names)]
                sample = {"__key__": key, "jpg": photos[photo], "txt": f"alt text of {key}",
                          "json": {"url": f"https://example.com/{key}.jpg", "width": 96, "key": key}}
                if index == 3:
                    sample = {"__key__": key, "txt": "a caption whose image failed to download"}
                writer.write(sample)
                if index == 3:
                    expected[f"{path}!{key}.txt"] = images.NOT_AN_IMAGE  # no image with that key: a row as before
                else:
                    expected[f"{path}!{key}.jpg"] = None
                    fields[f"{path}!{key}.jpg"] = key
        paths.append(path)
    return paths, expected, fields


def test_webdataset_samples_carry_their_fields_and_their_parts_are_no_rows(photos, fake_bundle, tmp_path):
    paths, expected, keys = _write_shards(str(tmp_path), photos, shards=5)
    out = str(tmp_path / "out")
    result = caption_job.run(argv([str(tmp_path / "shard-*.tar")], fake_bundle, out, "--archive_unit_members", "3"),
                                test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    captions, errors = read_outputs(out)
    check_every_input_once(captions, errors, expected)
    assert runtime.metric_counters(result)["sample_parts"] == 2 * len(keys)  # each image's .txt and .json
    for row in captions:
        key = keys[row[tables.IMAGE_URI]]
        assert row[tables.SAMPLE_KEY] == key and row[tables.SAMPLE_TEXT] == f"alt text of {key}"
        assert row[tables.SAMPLE_URL] == f"https://example.com/{key}.jpg"
        assert json.loads(row[tables.SAMPLE_JSON]) == {"url": f"https://example.com/{key}.jpg", "width": 96,
                                                       "key": key}


def test_plain_archives_get_the_member_key_and_no_fields(photos, fake_bundle, tmp_path):
    path = str(tmp_path / "plain.zip")
    open(path, "wb").write(_zip_bytes([("dir/a.b.jpg", photos[list(photos)[0]]), ("notes.txt", b"not a sample")]))
    out = str(tmp_path / "out")
    caption_job.run(argv([path], fake_bundle, out), test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    captions, errors = read_outputs(out)
    assert [(row[tables.SAMPLE_KEY], row[tables.SAMPLE_TEXT], row[tables.SAMPLE_JSON]) for row in captions] == [
        ("dir/a", None, None)]
    assert [(row[tables.IMAGE_URI], row[tables.ERROR]) for row in errors] == [(f"{path}!notes.txt",
                                                                                images.NOT_AN_IMAGE)]


def test_a_sample_member_that_is_no_json_or_too_big_is_a_part_not_a_field(photos, tmp_path):
    data = next(iter(photos.values()))
    path = str(tmp_path / "odd.tar")
    open(path, "wb").write(tar_bytes([("k.jpg", data), ("k.json", b"{not json"), ("k.txt", b"x" * 200_000),
                                      ("k.npy", b"\x93NUMPY")]))
    made, others = _units_of(path, 10, str(tmp_path / "spill"))
    (span,) = made[0].spans
    assert dict(span.sample) == {tables.SAMPLE_KEY: "k"}
    assert sorted(type(event).__name__ for event in others) == ["SamplePart"] * 3


def test_many_shards_and_loose_files_in_one_run(photos, fake_bundle, tmp_path):
    """A run over 20 shards and a folder of loose photos: every sample and file once; shards spread as units."""
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    paths, expected, _ = _write_shards(str(shard_dir), photos, shards=20)
    loose = tmp_path / "loose"
    loose.mkdir()
    for name, data in photos.items():
        (loose / name).write_bytes(data)
        expected[str(loose / name)] = None
    out = str(tmp_path / "out")
    caption_job.run(argv([str(shard_dir), str(loose)], fake_bundle, out), test_pipeline=local_test_pipeline(),
                       models=FAKE_MODELS)
    check_every_input_once(*read_outputs(out), expected)


# -- what a second reader found -----------------------------------------------------------------------------------

@pytest.mark.integration
def test_a_webdataset_shard_rerun_adds_no_rows_for_its_texts(photos, fake_bundle, tmp_path):
    paths, expected, _ = _write_shards(str(tmp_path), photos, shards=2)
    out = str(tmp_path / "out")
    args = argv([str(tmp_path / "shard-*.tar")], fake_bundle, out)
    caption_job.run(args, test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    result = caption_job.run(args + ["--skip_existing"], test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    assert runtime.metric_counters(result).get("errors_not_an_image", 0) == 0
    check_every_input_once(*read_outputs(out), expected)


def test_a_lone_surrogate_in_a_samples_json_is_escaped_not_a_crash(photos, fake_bundle, tmp_path):
    path = str(tmp_path / "odd.tar")
    document = b'{"url": "http://example.com/\\ud800.jpg"}'
    open(path, "wb").write(tar_bytes([("k.jpg", next(iter(photos.values()))), ("k.json", document)]))
    out = str(tmp_path / "out")
    caption_job.run(argv([path], fake_bundle, out), test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    (row,), errors = read_outputs(out)
    assert not errors and row[tables.SAMPLE_URL] == "http://example.com/\\ud800.jpg"


@pytest.mark.integration
def test_a_failed_spill_fails_the_run_and_the_rerun_loses_nothing(photos, fake_bundle, tmp_path, monkeypatch):
    """A full disk is not the archive's fault: no corrupt_archive row, no member without a row; the run fails (the
    runner retries), and a rerun captions everything."""
    members = list(photos.items())[:6]
    path = str(tmp_path / "one.tar.gz")
    open(path, "wb").write(gzip.compress(tar_bytes(members)))
    original = units.SpillWriter.__call__
    calls = []

    def full_disk(self, uri, position, data):
        calls.append(uri)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return original(self, uri, position, data)
    monkeypatch.setattr(units.SpillWriter, "__call__", full_disk)
    out = str(tmp_path / "out")
    with pytest.raises(Exception, match="spill file"):
        caption_job.run(argv([path], fake_bundle, out), test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    monkeypatch.undo()
    caption_job.run(argv([path], fake_bundle, out, "--skip_existing"), test_pipeline=local_test_pipeline(),
                       models=FAKE_MODELS)
    check_every_input_once(*read_outputs(out), {f"{path}!{name}": None for name, _ in members})


def test_a_zip_directory_stating_more_than_the_expansion_limit_is_rows_when_indexed(tmp_path):
    path = str(tmp_path / "bomb.zip")
    open(path, "wb").write(_zip_bytes([(f"zeros{index}.jpg", bytes(1 << 20)) for index in range(100)]))
    made, others = _units_of(path, 32, str(tmp_path / "spill"))
    spans = sum(len(unit.spans) for unit in made)
    limits = [event for event in others if event.error_class == images.EXPANSION_LIMIT]
    assert spans == 64 and len(limits) == 36  # 64 MiB stated, then the ratio (~1,000 x the file) is judged
    whole = list(archives.read_archive(path))
    assert sum(isinstance(event, archives.MemberData) for event in whole) <= 65


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_hard_links_to_passed_over_or_unnamed_targets_resolve_as_when_reading_whole(suffix, photos, tmp_path):
    name, data = next(iter(photos.items()))
    to_blob = tarfile.TarInfo("pic.jpg")
    to_blob.type, to_blob.linkname = tarfile.LNKTYPE, "blob"
    to_done = tarfile.TarInfo("again.jpg")
    to_done.type, to_done.linkname = tarfile.LNKTYPE, name
    path = str(tmp_path / f"links{suffix}")
    open(path, "wb").write(COMPRESSORS[suffix](tar_bytes([("blob", data), (name, data), to_blob, to_done])))
    made, others = _units_of(path, 10, str(tmp_path / "spill"), skip={name})  # `name` done by an earlier run
    read = _read_units(made, path)
    assert {uri: event.data == data for uri, event in read.items()} == {f"{path}!pic.jpg": True,
                                                                       f"{path}!again.jpg": True}
    assert [(event.uri, event.error_class) for event in others if isinstance(event, archives.MemberFailure)] == [
        (f"{path}!blob", images.NOT_AN_IMAGE)]


def test_an_archive_whose_name_is_a_glob_is_that_archive(photos, fake_bundle, tmp_path):
    members = list(photos.items())
    odd = str(tmp_path / "a[1].tar")
    open(odd, "wb").write(tar_bytes(members[:3]))
    open(str(tmp_path / "a1.tar"), "wb").write(tar_bytes(members))  # what the name matches as a glob
    out = str(tmp_path / "out")
    caption_job.run(argv([odd], fake_bundle, out), test_pipeline=local_test_pipeline(), models=FAKE_MODELS)
    check_every_input_once(*read_outputs(out), {f"{odd}!{name}": None for name, _ in members[:3]})


def test_a_relative_glob_in_the_first_part_of_the_path(photos, fake_bundle, tmp_path, monkeypatch):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
    name, data = next(iter(photos.items()))
    (tmp_path / "x" / "a.jpg").write_bytes(data)
    (tmp_path / "y" / "a.jpg").write_bytes(data)
    monkeypatch.chdir(tmp_path)
    caption_job.run(argv(["*/a.jpg"], fake_bundle, "out"), test_pipeline=local_test_pipeline(),
                       models=FAKE_MODELS)
    check_every_input_once(*read_outputs(str(tmp_path / "out")), {str(tmp_path / "x" / "a.jpg"): None,
                                                                  str(tmp_path / "y" / "a.jpg"): None})


def test_a_damaged_bzip2_zip_member_is_corrupt_as_when_reading_whole(photos, tmp_path):
    members = list(photos.items())[:2]
    data = bytearray(_zip_bytes(members, zipfile.ZIP_BZIP2))
    start = data.find(b"BZh") + 200
    data[start:start + 50] = bytes(50)
    path = str(tmp_path / "bz.zip")
    open(path, "wb").write(bytes(data))
    made, _ = _units_of(path, 10, str(tmp_path / "spill"))
    indexed = {uri: event.error_class for uri, event in _read_units(made, path).items()
               if isinstance(event, archives.MemberFailure)}
    whole = {event.uri: event.error_class for event in archives.read_archive(path)
             if isinstance(event, archives.MemberFailure)}
    assert indexed == whole == {f"{path}!{members[0][0]}": images.CORRUPT_ARCHIVE}


def test_a_list_naming_sample_members_gets_their_rows_and_fields(photos, fake_bundle, tmp_path):
    webdataset = pytest.importorskip("webdataset")
    path = str(tmp_path / "shard.tar")
    with webdataset.TarWriter(path) as writer:
        for key, photo in (("000", list(photos)[0]), ("001", list(photos)[1])):
            writer.write({"__key__": key, "jpg": photos[photo], "txt": f"text of {key}"})
    listing = tmp_path / "wanted.txt"
    listing.write_text(f"{path}!000.jpg\n{path}!000.txt\n{path}!001.jpg\n")
    out = str(tmp_path / "out")
    caption_job.run(argv([str(listing)], fake_bundle, out), test_pipeline=local_test_pipeline(),
                       models=FAKE_MODELS)
    captions, errors = read_outputs(out)
    check_every_input_once(captions, errors, {f"{path}!000.jpg": None, f"{path}!001.jpg": None,
                                              f"{path}!000.txt": images.NOT_AN_IMAGE})
    assert {row[tables.IMAGE_URI][-7:]: row[tables.SAMPLE_TEXT] for row in captions} == {
        "000.jpg": "text of 000", "001.jpg": "text of 001"}
