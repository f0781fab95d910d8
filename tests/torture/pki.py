"""A throwaway PKI made with the openssl CLI: a CA, a server certificate for 127.0.0.1, a
client certificate (CN = a device account) signed by the CA, and a self-signed "rogue"
client certificate with the same CN that the gateway must not trust."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def make_pki(d: Path, client_cn: str) -> Pki:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("openssl is not installed")
    d.mkdir(parents=True, exist_ok=True)

    def sh(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    sh("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
       "-subj", "/CN=fieldlink torture CA")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, ext, cn in (("server", "server.ext", "127.0.0.1"),
                          ("client", "client.ext", client_cn)):
        sh("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        sh("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
           "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext)
    sh("req", "-x509", *ec, "-keyout", "rogue.key", "-out", "rogue.pem", "-days", "2",
       "-subj", f"/CN={client_cn}")
    return Pki(*(d / f for f in ("ca.pem", "server.pem", "server.key", "client.pem",
                                 "client.key", "rogue.pem", "rogue.key")))
