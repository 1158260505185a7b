"""Inputs at any URI Spark's Hadoop client reads (hdfs://, s3a://, abfs://, viewfs://, ...), seen from the driver.

The Spark engine's workers read such inputs themselves (`spark.read`); the driver still needs a few things from
them before Spark does: whether the input is a file or a folder and what the folder holds (the same rules as for a
local folder, `pipeline.io.folder_kind`), the sha256 of each input for the ingest manifest (the same value a local
copy of the bytes gives, so re-ingesting the same export from a mount or from HDFS is recognised), the first bytes
(is it Parquet?), and a CSV's bytes for the bounded clean copy `pipeline.io.clean_csv_copy` makes on the driver.
All of it goes through the session's JVM (`org.apache.hadoop.fs.FileSystem`, with the session's Hadoop
configuration: credentials, mount tables), so whatever file systems the cluster's Spark reads, this reads; the
hashing runs in the JVM (commons-codec), and no file's bytes cross py4j. Local paths go to `pipeline.io` as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.ingest.files import LocalFiles
from pipeline.io import PARQUET_SUFFIXES, TableError, folder_kind, folder_sha256, hidden, is_uri, printable

PARQUET_MAGIC = b"PAR1"


def _java_line(e: BaseException) -> str:
    """The Java exception's own line out of a Py4JJavaError ("java.io.FileNotFoundException: ...")."""
    text = str(getattr(e, "java_exception", "") or e)
    line = next((x.strip() for x in text.splitlines() if x.strip()), type(e).__name__)
    return printable(re.sub(r"^[\w.$]+(Exception|Error): ", "", line), 300)


class HadoopFiles(LocalFiles):
    """The driver's view of input files: URIs through the SparkSession's Hadoop FileSystem, paths as `LocalFiles`
    sees them. An `pipeline.ingest.files.InputFiles` (units to commit, sha256 of each)."""

    def __init__(self, spark: Any) -> None:
        self._jvm = spark._jvm
        self._conf = spark._jsc.hadoopConfiguration()

    def _call(self, uri: str, action: Any) -> Any:
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
            raise TableError(f"{uri}: cannot be read: {_java_line(e)}") from None

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

