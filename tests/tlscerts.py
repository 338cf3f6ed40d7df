"""Certificates for the TLS tests, made with the openssl CLI: a test CA and leaf
certificates it signs (ECDSA P-256), so clients can verify against the CA as they would
in production (curl --cacert, ssl.create_default_context(cafile=...)).

    ca = CA(tmp_path)                      # ca.cert: the CA's PEM
    leaf = ca.issue("a.test", "*.a.test")  # leaf.cert, leaf.key (0600): PEM files
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@dataclass
class Leaf:
    cert: Path
    key: Path
    names: tuple[str, ...]

    def key_bytes(self) -> list[bytes]:
        """Byte strings only this key's holder has: the PEM's base64 body lines and the
        private scalar (DER), for memory scans."""
        pem = self.key.read_text()
        lines = [ln.encode() for ln in pem.splitlines() if ln and not ln.startswith("-----")]
        der = subprocess.run(["openssl", "ec", "-in", str(self.key), "-text", "-noout"],
                             capture_output=True, text=True, check=True).stdout
        hexpart, take = [], False
        for line in der.splitlines():
            if line.startswith("priv:"):
                take = True
                continue
            if take:
                if not line.startswith(" "):
                    break
                hexpart.append(line.strip().replace(":", ""))
        scalar = bytes.fromhex("".join(hexpart))
        if len(scalar) == 33 and scalar[0] == 0:
            scalar = scalar[1:]
        return lines + [scalar]


class CA:
    """A throwaway certificate authority under `root`."""

    def __init__(self, root: Path, name: str = "hostd test CA"):
        self.root = Path(root) / "ca"
        self.root.mkdir(parents=True, exist_ok=True)
        self.cert = self.root / "ca.crt"
        self.key = self.root / "ca.key"
        self._n = 0
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-subj", f"/CN={name}", "-days", "30",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-keyout", str(self.key), "-out", str(self.cert), cwd=self.root)

    def issue(self, *names: str, days: int = 30, out: Path | None = None,
              tag: str = "") -> Leaf:
        """A leaf for these DNS names (the first is the CN), valid `days` days, signed
        by this CA, with the CA's certificate appended (leaf first, then chain)."""
        self._n += 1
        out = Path(out) if out else self.root.parent / "certs"
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{names[0].replace('*', 'star')}{tag}-{self._n}"
        key, csr, crt = out / f"{stem}.key", out / f"{stem}.csr", out / f"{stem}.crt"
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-subj", f"/CN={names[0]}", "-keyout", str(key), "-out", str(csr),
                 cwd=out)
        ext = out / f"{stem}.ext"
        ext.write_text("subjectAltName=" + ",".join(f"DNS:{n}" for n in names)
                       + "\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey",
                 str(self.key), "-CAcreateserial", "-days", str(days), "-extfile", str(ext),
                 "-out", str(crt), cwd=out)
        crt.write_text(crt.read_text() + self.cert.read_text())
        os.chmod(key, 0o600)
        csr.unlink()
        ext.unlink()
        return Leaf(crt, key, tuple(names))
