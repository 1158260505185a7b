"""Inputs and outputs at any URI Spark's Hadoop client reads (hdfs://, s3a://, abfs://, viewfs://, ...), seen from the driver.

The Spark engine's workers read such inputs themselves (`spark.read`); the driver still needs a few things from
them before Spark does: whether the input is a file or a folder and what the folder holds (the same rules as for a
local folder, `pipeline.io.folder_kind`), the sha256 of each input for the ingest manifest (the same value a local
copy of the bytes gives, so re-ingesting the same export from a mount or from HDFS is recognised), the first bytes
(is it Parquet?), and a CSV's bytes for the bounded clean copy `pipeline.io.clean_csv_copy` makes on the driver.
All of it goes through the session's JVM (`org.apache.hadoop.fs.FileSystem`, with the session's Hadoop
configuration: credentials, mount tables), so whatever file systems the cluster's Spark reads, this reads; the
hashing runs in the JVM (commons-codec), and no file's bytes cross py4j. Local paths go to `pipeline.io` as before.

Outputs the driver writes (scores, rejects, drift reports, manifests) are written to a local file first and then
uploaded with `put`: copied to a hidden name beside the target and renamed over it, so a reader of the folder sees
the old file or the new one, never half of one.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.ingest.files import LocalFiles
from pipeline.io import (
    PARQUET_SUFFIXES,
    TableError,
    folder_kind,
    folder_sha256,
    hidden,
    is_dead_temp,
    is_uri,
    printable,
    temp_name,
)

PARQUET_MAGIC = b"PAR1"


def _java_line(e: BaseException) -> str:
    """The Java exception's own line out of a Py4JJavaError ("java.io.FileNotFoundException: ...")."""
    text = str(getattr(e, "java_exception", "") or e)
    line = next((x.strip() for x in text.splitlines() if x.strip()), type(e).__name__)
    return printable(re.sub(r"^[\w.$]+(Exception|Error): ", "", line), 300)


class HadoopFiles(LocalFiles):
    """The driver's view of files: URIs through the SparkSession's Hadoop FileSystem, paths as `LocalFiles` sees
    them. A `pipeline.ingest.files.Files` (inputs to commit and hash, the output folder's files)."""

    def __init__(self, spark: Any) -> None:
        self._jvm = spark._jvm
        self._conf = spark._jsc.hadoopConfiguration()

    def _call(self, uri: str, action: Any, doing: str = "read") -> Any:
        """Run `action(path, filesystem)` on the JVM; a Java error becomes a TableError naming `uri`."""
        from py4j.protocol import Py4JJavaError

        try:
            path = self._jvm.org.apache.hadoop.fs.Path(uri)
            return action(path, path.getFileSystem(self._conf))
        except Py4JJavaError as e:
            cls = e.java_exception.getClass().getName()
            if cls.endswith("FileNotFoundException"):
                raise TableError(f"{uri}: no such file or folder") from None
            missing_class = "ClassNotFoundException" in str(e.java_exception) and "FileSystem" in str(e.java_exception)
            if cls.endswith("UnsupportedFileSystemException") or missing_class:  # unknown scheme / connector jar
                scheme = uri.split(":", 1)[0]
                raise TableError(f"{uri}: this Spark has no Hadoop client for {scheme}:// (add its connector, e.g. "
                                 "hadoop-aws for s3a://, to spark.jars or the cluster's classpath)") from None
            raise TableError(f"{uri}: cannot be {doing}: {_java_line(e)}") from None

    def is_folder(self, location: str | Path) -> bool:
        if not is_uri(location):
            return super().is_folder(location)
        return bool(self._call(str(location), lambda p, fs: fs.getFileStatus(p).isDirectory()))

    def files(self, uri: str) -> list[str]:
        """The non-hidden files under the folder `uri`, as paths relative to it (recursively)."""
        def listing(path: Any, fs: Any) -> list[str]:
            base = fs.getFileStatus(path).getPath().toUri().getPath().rstrip("/")
            found, it = [], fs.listFiles(path, True)
            while it.hasNext():
                full = it.next().getPath().toUri().getPath()
                found.append(full[len(base) + 1:])
            return found

        return [f for f in self._call(uri, listing) if not hidden(f)]

    def units(self, inputs: Sequence[str | Path], atomic: bool) -> list[list[str | Path]]:
        """As `pipeline.ingest.files` makes them for paths: a file, a Parquet folder (one table) or a folder of CSV
        files (each file); with `atomic`, all of them as one unit. Checked before any is read."""
        units: list[list[str | Path]] = []
        for location in inputs:
            if not is_uri(location):
                units += super().units([location], atomic=False)
            elif not self.is_folder(location):
                units.append([location])
            else:
                uri = str(location).rstrip("/")
                names = self.files(uri)
                kind = folder_kind(uri, names)
                units.append([f"{uri}/{n}" for n in sorted(names, key=lambda n: n.split("/"))] if kind == "csv"
                             else [uri])
        return [[f for u in units for f in u]] if atomic and units else units

    def sha256(self, location: str | Path) -> str:
        """sha256 of the bytes (a Parquet folder: `pipeline.io.folder_sha256` of its data files), as for a path."""
        if not is_uri(location):
            return super().sha256(location)
        uri = str(location).rstrip("/")
        if not self.is_folder(uri):
            return self._file_sha256(uri)
        parquet = [n for n in self.files(uri) if n.lower().endswith(PARQUET_SUFFIXES)]
        return folder_sha256((n, self._file_sha256(f"{uri}/{n}")) for n in parquet)

    def _file_sha256(self, uri: str) -> str:
        def digest(path: Any, fs: Any) -> str:
            stream = fs.open(path)
            try:
                return str(self._jvm.org.apache.commons.codec.digest.DigestUtils.sha256Hex(stream))
            finally:
                stream.close()

        return self._call(uri, digest)

    def head(self, uri: str, n: int = 4) -> bytes:
        """The first `n` bytes of a file (fewer for a shorter one)."""
        def read(path: Any, fs: Any) -> bytes:
            stream = fs.open(path)
            try:
                return bytes(stream.readNBytes(n))
            finally:
                stream.close()

        return self._call(uri, read)

    def is_parquet(self, uri: str) -> bool:
        """A folder (a Parquet dataset: see `units`) or a file that starts with Parquet's magic bytes."""
        return self.is_folder(uri) or self.head(uri) == PARQUET_MAGIC

    def fetch(self, uri: str, local: Path) -> Path:
        """Copy the file at `uri` to the local path `local` (the JVM streams it; nothing crosses py4j)."""
        self._call(uri, lambda p, fs: fs.copyToLocalFile(False, p, self._jvm.org.apache.hadoop.fs.Path(
            local.resolve().as_uri()), True))
        return local


    # --- outputs ---------------------------------------------------------------------------------------------------
    def exists(self, location: str | Path) -> bool:
        if not is_uri(location):
            return super().exists(location)
        return bool(self._call(str(location), lambda p, fs: fs.exists(p)))

    def read_text(self, location: str | Path) -> str | None:
        if not is_uri(location):
            return super().read_text(location)
        if not self.exists(location):
            return None
        with tempfile.TemporaryDirectory(prefix="txseq-get-") as tmp:
            return self.fetch(str(location), Path(tmp, "f")).read_text()

    def write_text(self, text: str, location: str | Path) -> None:
        if not is_uri(location):
            return super().write_text(text, location)
        self.write_bytes(text.encode(), location)

    def write_bytes(self, data: bytes, location: str | Path) -> None:
        """The bytes as the file at `location`: for a URI, a local file uploaded with `put` (no bytes cross py4j)."""
        if not is_uri(location):
            return super().write_bytes(data, location)
        with tempfile.TemporaryDirectory(prefix="txseq-put-") as tmp:
            local = Path(tmp, "f")
            local.write_bytes(data)
            self.put(local, str(location))

    def make_folder(self, location: str | Path) -> None:
        if not is_uri(location):
            return super().make_folder(location)
        self._call(str(location), lambda p, fs: fs.mkdirs(p), doing="written")

    def staging(self, location: str | Path) -> Path | str:
        if not is_uri(location):
            return super().staging(location)
        parent, name = str(location).rstrip("/").rsplit("/", 1)
        uri = f"{parent}/{temp_name(name, '.staging')}"
        self.make_folder(uri)
        return uri

    def replace(self, source: str | Path, target: str | Path) -> None:
        """Move `source` to `target`, replacing what is there (both URIs on one file system, or both paths)."""
        if not is_uri(target):
            return super().replace(source, target)
        hdfs_path = self._jvm.org.apache.hadoop.fs.Path

        def move(path: Any, fs: Any) -> None:
            fs.mkdirs(path.getParent())
            if fs.exists(path):
                fs.delete(path, True)
            if not fs.rename(hdfs_path(str(source)), path):
                raise TableError(f"{target}: cannot be written: the file system refused to rename {source} to it")

        self._call(str(target), move, doing="written")

    def remove(self, location: str | Path) -> None:
        """Delete the file or folder (nothing there: nothing to do)."""
        if not is_uri(location):
            return super().remove(location)
        self._call(str(location), lambda p, fs: fs.delete(p, True), doing="removed")

    def remove_dead_temp(self, folder: str | Path) -> None:
        """`pipeline.io.remove_dead_temp` for a folder at a URI: the staging left by killed runs of this host."""
        if not is_uri(folder):
            return super().remove_dead_temp(folder)

        def clean(path: Any, fs: Any) -> None:
            if fs.exists(path):
                for status in fs.listStatus(path):
                    if is_dead_temp(status.getPath().getName()):
                        fs.delete(status.getPath(), True)

        self._call(str(folder), clean, doing="written")

    def parquet_files(self, location: str | Path) -> list[Path | str]:
        if not is_uri(location):
            return super().parquet_files(location)
        uri = str(location).rstrip("/")
        if not self.exists(uri) or not self.is_folder(uri):
            return [uri]
        return [f"{uri}/{n}" for n in sorted(self.files(uri), key=lambda n: n.split("/"))
                if n.lower().endswith(PARQUET_SUFFIXES)]

    def put(self, local: Path, uri: str) -> str:
        """Upload the local file or folder `local` to `uri`, replacing what is there (see the module docstring)."""
        hdfs_path = self._jvm.org.apache.hadoop.fs.Path
        name = uri.rstrip("/").rsplit("/", 1)[1]

        def upload(path: Any, fs: Any) -> None:
            fs.mkdirs(path.getParent())
            # through the file system the folder really is on (a viewfs mount's target), which writes no hidden
            # .crc files beside the data when that is a local disk (polars refuses a folder holding them)
            parent = fs.resolvePath(path.getParent())
            real = parent.getFileSystem(self._conf)
            real.setWriteChecksum(False)
            target, temp = hdfs_path(parent, name), hdfs_path(parent, temp_name(name))
            try:
                real.copyFromLocalFile(False, True, hdfs_path(local.resolve().as_uri()), temp)
                if real.exists(target):
                    real.delete(target, True)
                if not real.rename(temp, target):
                    raise TableError(f"{uri}: cannot be written: the file system refused to rename {temp} to it")
            finally:
                if real.exists(temp):
                    real.delete(temp, True)

        self._call(uri, upload, doing="written")
        return uri
