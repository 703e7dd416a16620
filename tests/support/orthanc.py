"""A real Orthanc PACS for tests: loopback only, free DICOM and HTTP ports, its own storage, restartable.

The Debian package's system service is never used: each test starts ``Orthanc CONFIG.json`` with a
throw-away configuration (DicomAet ORTHANC, no HTTP authentication but HTTP reachable from 127.0.0.1
only, medge's calling AE title ``MEDGE`` declared as a modality so it may C-FIND and C-STORE).

Usage::

    from tests.support.orthanc import Orthanc
    with Orthanc(tmp_path) as pacs:
        pacs.address                  # "ORTHANC@127.0.0.1:<dicom port>" (medge hospital forward --pacs)
        pacs.upload(Path("x.dcm"))    # REST upload, returns Orthanc's instance id
        pacs.find("Instance", StudyInstanceUID="1.2...")   # REST /tools/find, expanded
        pacs.stop(); pacs.start()     # same ports, same storage
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.mqtt_broker import free_port

ORTHANC = "/usr/sbin/Orthanc"


def orthanc_path() -> str:
    """The Orthanc binary, or skip the calling test with the reason."""
    p = ORTHANC if os.access(ORTHANC, os.X_OK) else shutil.which("Orthanc")
    if not p:
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")
    return p


class Orthanc:
    """Orthanc on 127.0.0.1 with a temporary storage and index; restartable on the same ports."""

    def __init__(self, folder: Path, aet: str = "ORTHANC", calling_aets: tuple[str, ...] = ("MEDGE",)) -> None:
        self.binary = orthanc_path()
        self.folder = Path(folder) / "orthanc"
        (self.folder / "storage").mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.dicom_port:
            self.http_port = free_port()
        self.config_file = self.folder / "orthanc.json"
        self.log_file = self.folder / "orthanc.log"
        config = {
            "Name": "medge-test",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "Plugins": [],
            "DicomServerEnabled": True,
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": False,
            "DicomModalities": {name.lower(): {"AET": name, "Host": "127.0.0.1", "Port": free_port(),
                                               "AllowFind": True, "AllowStore": True, "AllowEcho": True}
                                for name in calling_aets},
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # the REST API answers 127.0.0.1 only
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "StableAge": 1,
            "OverwriteInstances": False,  # a resent instance (same SOP Instance UID) is stored once
            "StorageCompression": False,
            "HttpDescribeErrors": True,
        }
        self.config_file.write_text(json.dumps(config, indent=1))
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def address(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        self._log = open(self.log_file, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([self.binary, str(self.config_file)], stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.folder)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                self.get("/system", timeout=0.5)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {timeout}s: {self.log()[-2000:]}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    # ------------------------------------------------------------------------------------- REST
    def _request(self, method: str, path: str, body: bytes | None = None, timeout: float = 10.0) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/json" if body[:1] in (b"{", b"[") else "application/dicom")
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 (127.0.0.1 only)
            return r.read()

    def get(self, path: str, timeout: float = 10.0) -> Any:
        return json.loads(self._request("GET", path, timeout=timeout))

    def download(self, path: str) -> bytes:
        return self._request("GET", path)

    def upload(self, dicom_file: Path) -> str:
        return json.loads(self._request("POST", "/instances", Path(dicom_file).read_bytes()))["ID"]

    def find(self, level: str, **query: str) -> list[dict[str, Any]]:
        body = json.dumps({"Level": level, "Query": query, "Expand": True}).encode()
        return json.loads(self._request("POST", "/tools/find", body))

    def __enter__(self) -> Orthanc:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
