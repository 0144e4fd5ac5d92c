"""TLS material for the coordinator: a private CA and the SuperLink's certificate for its host names."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"


def _write_private(path: Path, key) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)


def _names(hosts: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(host))
    return out


def make_server_certificates(folder: str | Path, hosts: list[str], *, days: int = 365,
                             organisation: str = "fedprofile federation") -> dict[str, Path]:
    """Create (or reuse) the CA in `folder` and issue the SuperLink's certificate for `hosts` (DNS names or IP
    addresses; merchants must reach the SuperLink by one of them). Private keys are written 0600; merchants
    get only `ca.crt`."""
    if not hosts:
        raise ValueError("give at least one host name or IP address the merchants will connect to")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    if (folder / CA_CERT).exists() and (folder / CA_KEY).exists():
        ca_key = serialization.load_pem_private_key((folder / CA_KEY).read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate((folder / CA_CERT).read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                             x509.NameAttribute(NameOID.COMMON_NAME, f"{organisation} CA")])
        ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=10 * days))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .sign(ca_key, hashes.SHA384()))
        _write_private(folder / CA_KEY, ca_key)
        (folder / CA_CERT).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                                     x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA384()))
    _write_private(folder / SERVER_KEY, key)
    (folder / SERVER_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return {"ca": folder / CA_CERT, "certificate": folder / SERVER_CERT, "key": folder / SERVER_KEY}
