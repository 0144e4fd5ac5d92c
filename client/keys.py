"""The merchant's SuperNode key pair: the private key stays with the merchant, the public key is registered."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def make_merchant_keys(folder: str | Path, name: str = "merchant") -> dict[str, Path]:
    """The merchant's SuperNode key pair (EC P-384, OpenSSH format, as Flower's SuperNode authentication reads
    it): `NAME` (private, 0600, never leaves the merchant) and `NAME.pub` (sent to the coordinator to register)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / name, folder / f"{name}.pub"
    if private.exists():
        raise FileExistsError(f"{private} exists; a merchant keeps its key (delete it only to re-register)")
    key = ec.generate_private_key(ec.SECP384R1())
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    os.chmod(private, 0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + f" {name}\n".encode())
    return {"private": private, "public": public}
