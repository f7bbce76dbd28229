"""Common Crawl ingest from S3 by crawl id, against a real moto server on 127.0.0.1 holding the sample
files under Common Crawl's key layout with a warc.paths.gz / wet.paths.gz listing; a TCP proxy that cuts
the first download mid-stream shows the ranged-GET resume."""
from __future__ import annotations

import gzip
import shutil
import socket
import threading

import pytest

from pipelines.core.shards import read_all
from pipelines.ingest.common_crawl import crawl_files, validate_crawl_id
from pipelines.stages import runner
run = runner("ingest")

CRAWL = "CC-MAIN-2024-22"
FILES = {  # sample file -> its key in the bucket
    "samples/warc/cc-main-2020-34_resiliparse-sample.warc.gz":
        f"crawl-data/{CRAWL}/segments/1715971057494.65/warc/CC-MAIN-20240517-00000.warc.gz",
    "samples/warc/cc-main-2024-22_whirlwind.warc.gz":
        f"crawl-data/{CRAWL}/segments/1715971057494.65/warc/CC-MAIN-20240517-00001.warc.gz",
    "samples/warc/dolma_sample-0000.warc.gz":
        f"crawl-data/{CRAWL}/segments/1715971058009.13/warc/CC-MAIN-20240518-00002.warc.gz",
    "samples/warc/cc-main-2024-22_whirlwind.warc.wet.gz":
        f"crawl-data/{CRAWL}/segments/1715971057494.65/wet/CC-MAIN-20240517-00001.warc.wet.gz",
}


class CuttingProxy:
    """Forwards TCP to moto; the first GET of a *.warc.gz object without a Range header is cut after
    ``cut_after`` response bytes (a connection reset mid-body, as a flaky network does)."""

    def __init__(self, upstream: tuple[str, int], cut_after: int):
        self.upstream, self.cut_after = upstream, cut_after
        self.cuts, self.ranged_gets = 0, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client):
        up = socket.create_connection(self.upstream)
        first = client.recv(65536)
        head = first.split(b"\r\n\r\n", 1)[0].lower()
        line = head.split(b"\r\n", 1)[0]
        if line.startswith(b"get ") and b".warc.gz" in line and b"\r\nrange:" in head:
            self.ranged_gets += 1
        cut = (line.startswith(b"get ") and b".warc.gz" in line.split(b"?")[0] and b"\r\nrange:" not in head
               and self.cuts == 0)
        if cut:
            self.cuts += 1
        up.sendall(first)

        def pump_up():
            try:
                while data := client.recv(65536):
                    up.sendall(data)
            except OSError:
                pass

        threading.Thread(target=pump_up, daemon=True).start()
        sent = 0
        try:
            while data := up.recv(65536):
                if cut and sent + len(data) > self.cut_after:
                    client.sendall(data[: self.cut_after - sent])
                    break
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (client, up):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.sock.close()


@pytest.fixture
def moto_cc(workspace, moto_s3, monkeypatch):
    """The commoncrawl bucket on the session's moto server, emptied, then holding FILES and their listings."""
    moto_s3.setenv(monkeypatch)
    monkeypatch.setenv("PIPELINES_S3_STREAM_RETRIES", "3")
    s3 = moto_s3.empty_bucket("commoncrawl")
    for path, key in FILES.items():
        s3.put_object(Bucket="commoncrawl", Key=key, Body=workspace.path(path).read_bytes())
    for kind in ("warc", "wet"):
        keys = [k for k in FILES.values() if f"/{kind}/" in k]
        s3.put_object(Bucket="commoncrawl", Key=f"crawl-data/{CRAWL}/{kind}.paths.gz",
                      Body=gzip.compress(("\n".join(keys) + "\n").encode(), mtime=0))
    return moto_s3.host, moto_s3.port


def _local_run(workspace, paths):
    params = workspace.params()
    params["ingest"].update(warc=list(paths), wet=[], curated={}, crawl_id=None)
    run(params)
    rows = read_all(workspace.path("data/ingest")).to_pylist()
    shutil.rmtree(workspace.path("data/ingest"))
    return rows


def test_crawl_id_reads_the_listing_and_streams_its_files(workspace, moto_cc):
    warc_local = [p for p in FILES if p.endswith(".warc.gz") and "wet" not in p]
    expected = _local_run(workspace, sorted(warc_local, key=lambda p: FILES[p])[:2])

    params = workspace.params()
    params["ingest"].update(warc=[], wet=[], curated={}, crawl_id=CRAWL, cc_files="warc", max_files=2)
    summary = run(params)
    rows = read_all(workspace.path("data/ingest")).to_pylist()
    listed = sorted(k for k in FILES.values() if "/warc/" in k)[:2]
    assert summary["files"] == 2
    assert sorted({r["source_file"] for r in rows}) == [f"s3://commoncrawl/{k}" for k in listed]
    assert {r["source"] for r in rows} == {"cc-main-2024-22"}
    same = ("text", "url", "crawl_date", "lang", "source_offset")
    assert [{k: r[k] for k in same} for r in rows] == [{k: r[k] for k in same} for r in expected]
    assert len(rows) > 10

    # WET listing, all files (max_files 0).
    assert crawl_files(CRAWL, "commoncrawl", "wet") == [
        f"s3://commoncrawl/{k}" for k in FILES.values() if "/wet/" in k]


def test_connection_cut_mid_stream_is_resumed_with_a_ranged_get(workspace, moto_cc, monkeypatch):
    expected = _local_run(workspace, ["samples/warc/dolma_sample-0000.warc.gz"])
    proxy = CuttingProxy(moto_cc, cut_after=60_000)  # the object is 214 kB: cut inside the body
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    try:
        params = workspace.params()
        params["ingest"].update(warc=[f"s3://commoncrawl/{FILES['samples/warc/dolma_sample-0000.warc.gz']}"],
                                wet=[], curated={})
        summary = run(params)
    finally:
        proxy.close()
    assert proxy.cuts == 1 and proxy.ranged_gets >= 1
    rows = read_all(workspace.path("data/ingest")).to_pylist()
    assert summary["skipped"].get("read_errors", 0) == 0
    assert [r["text"] for r in rows] == [r["text"] for r in expected] and len(rows) > 10


def test_bad_crawl_ids_and_missing_listings_fail_clearly(workspace, moto_cc):
    for bad in ("CC-MAIN-2024", "cc-main-2024-22", "CC-MAIN-2024-99", "CC-MAIN-2024-22/../x", None):
        with pytest.raises(ValueError, match="CC-MAIN-YYYY-WW"):
            validate_crawl_id(bad)
    params = workspace.params()
    params["ingest"].update(warc=[], wet=[], curated={}, crawl_id="CC-MAIN-2023-50")
    with pytest.raises(FileNotFoundError, match="CC-MAIN-2023-50/warc.paths.gz"):
        run(params)
    params["ingest"]["cc_files"] = "wat"
    with pytest.raises(ValueError, match="cc_files"):
        run(params)


def _put_listing(kind: str, keys: list[str]) -> None:
    import boto3

    boto3.client("s3").put_object(Bucket="commoncrawl", Key=f"crawl-data/{CRAWL}/{kind}.paths.gz",
                                  Body=gzip.compress(("\n".join(keys) + "\n").encode(), mtime=0))


def test_listed_key_missing_from_the_bucket_fails_before_any_work_naming_it(workspace, moto_cc):
    seg = f"crawl-data/{CRAWL}/segments/1715971057494.65/warc"
    missing = f"{seg}/CC-MAIN-20240517-00009.warc.gz"
    _put_listing("warc", sorted(k for k in FILES.values() if "/warc/" in k) + [missing])
    params = workspace.params()
    params["ingest"].update(warc=[], wet=[], curated={}, crawl_id=CRAWL, cc_files="warc", max_files=0)
    with pytest.raises(FileNotFoundError, match=rf"s3://commoncrawl/{missing}"):
        run(params)
    assert not list(workspace.path("data/ingest").glob("*.parquet"))  # nothing half-written


def test_truncated_and_empty_objects_on_s3_are_counted_and_the_rest_is_ingested(workspace, moto_cc):
    """Objects cut mid gzip member / empty, read through S3: the records before the cut are kept, the error is
    counted per file, the other files of the listing are ingested, exactly as for the same bytes on disk."""
    import boto3

    good = "samples/warc/dolma_sample-0000.warc.gz"
    raw = workspace.path(good).read_bytes()
    seg = f"crawl-data/{CRAWL}/segments/1715971058009.13/warc"
    bodies = {f"{seg}/CC-MAIN-20240518-00010.warc.gz": raw[: len(raw) // 2],   # cut inside a gzip member
              f"{seg}/CC-MAIN-20240518-00011.warc.gz": b"",                    # zero-length object
              f"{seg}/CC-MAIN-20240518-00012.warc.gz": raw[:100] + b"\x00" * 500}  # header, then garbage
    s3 = boto3.client("s3")
    for key, body in bodies.items():
        s3.put_object(Bucket="commoncrawl", Key=key, Body=body)
    good_key = FILES[good]
    _put_listing("warc", sorted([good_key, *bodies]))
    inputs = workspace.path("inputs")
    inputs.mkdir()
    for key, body in bodies.items():
        (inputs / key.rsplit("/", 1)[1]).write_bytes(body)
    local = {}
    for key in bodies:
        rows = _local_run(workspace, [f"inputs/{key.rsplit('/', 1)[1]}"])
        local[f"s3://commoncrawl/{key}"] = [r["text"] for r in rows]
    expected_good = [r["text"] for r in _local_run(workspace, [good])]

    params = workspace.params()
    params["ingest"].update(warc=[], wet=[], curated={}, crawl_id=CRAWL, cc_files="warc", max_files=0)
    summary = run(params)
    rows = read_all(workspace.path("data/ingest")).to_pylist()
    by_file: dict[str, list[str]] = {}
    for r in rows:
        by_file.setdefault(r["source_file"], []).append(r["text"])
    assert summary["files"] == 4
    assert by_file[f"s3://commoncrawl/{good_key}"] == expected_good and len(expected_good) > 10
    cut = f"s3://commoncrawl/{seg}/CC-MAIN-20240518-00010.warc.gz"
    assert 0 < len(by_file[cut]) < len(expected_good) and by_file[cut] == local[cut]
    assert by_file[cut] == expected_good[: len(by_file[cut])]  # the whole records before the cut
    for key in bodies:
        assert by_file.get(f"s3://commoncrawl/{key}", []) == local[f"s3://commoncrawl/{key}"]
    assert summary["skipped"]["read_errors"] == 2 and summary["skipped"]["empty_files"] == 1
