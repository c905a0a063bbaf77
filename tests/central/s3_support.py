"""A real S3-compatible HTTP server on loopback (moto's server) for the snapshot tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from gated.central.snapshots import S3Credentials, S3SnapshotStore
from tests.support.broker import wait_until_accepting

CREDENTIALS = S3Credentials("AKIDTESTING", "secret-never-logged")
REGION = "us-east-1"


@dataclass
class S3Server:
    """moto's threaded server on 127.0.0.1:port; stop and start again on the same port.

    moto keeps its buckets in the process, so objects outlive a restart of the listener,
    as they outlive an outage of a real store.
    """

    port: int
    server: Any = None

    @property
    def url(self) -> str:
        """The endpoint URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        """Listen (again)."""
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        assert wait_until_accepting("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.server.stop()
            self.server = None

    def boto(self) -> Any:
        """A boto3 client on the server, to set up buckets and look at them independently."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=CREDENTIALS.access_key_id,
                            aws_secret_access_key=CREDENTIALS.secret_access_key)

    def new_store(self, prefix: str = "pictures") -> S3SnapshotStore:
        """A store on a fresh bucket of its own."""
        bucket = f"gated-{uuid.uuid4().hex[:12]}"
        self.boto().create_bucket(Bucket=bucket)
        return S3SnapshotStore(bucket=bucket, credentials=CREDENTIALS, endpoint_url=self.url,
                               region=REGION, prefix=prefix, timeout_s=5.0)

    def keys(self, store: S3SnapshotStore) -> list[str]:
        """Every object key in the store's bucket."""
        listed = self.boto().list_objects_v2(Bucket=store.bucket)
        return sorted(o["Key"] for o in listed.get("Contents", []))

