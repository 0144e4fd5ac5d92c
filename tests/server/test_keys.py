"""TLS material and merchant keys in the forms Flower reads."""

from __future__ import annotations

import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from client.keys import make_merchant_keys
from server.keys import make_server_certificates
from server.superlink import SuperLinkSettings
from shared_model.processes import config_string


def test_server_certificate_is_signed_by_the_ca_for_the_given_hosts(tmp_path):
    paths = make_server_certificates(tmp_path, ["fl.example.com", "10.0.0.7"])
    ca = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    cert = x509.load_pem_x509_certificate(paths["certificate"].read_bytes())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fl.example.com"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert stat.S_IMODE(paths["key"].stat().st_mode) == 0o600
    again = make_server_certificates(tmp_path, ["other.example.com"])  # re-issued from the same CA
    x509.load_pem_x509_certificate(again["certificate"].read_bytes()).verify_directly_issued_by(ca)


def test_merchant_keys_are_ec_openssh_and_never_overwritten(tmp_path):
    paths = make_merchant_keys(tmp_path, "shop-a")
    private = load_ssh_private_key(paths["private"].read_bytes(), None)
    public = load_ssh_public_key(paths["public"].read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(public, ec.EllipticCurvePublicKey)
    assert public.public_numbers() == private.public_key().public_numbers()
    assert stat.S_IMODE(paths["private"].stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        make_merchant_keys(tmp_path, "shop-a")


def test_superlink_settings_refuse_half_configured_tls(tmp_path):
    with pytest.raises(ValueError, match="server keys"):
        SuperLinkSettings(state_dir=tmp_path, certs=None)
    with pytest.raises(ValueError, match="missing"):
        SuperLinkSettings(state_dir=tmp_path, certs=tmp_path / "empty")
    make_server_certificates(tmp_path / "certs", ["localhost"])
    command = SuperLinkSettings(state_dir=tmp_path, certs=tmp_path / "certs").command()
    assert "--enable-supernode-auth" in command and "--insecure" not in command
    assert "--insecure" in SuperLinkSettings(state_dir=tmp_path, insecure=True).command()


def test_config_string_quotes_text_and_keeps_numbers():
    assert config_string({"num-rounds": 3, "dp": True, "lr": "1e-3", "run-dir": "/tmp/a b", "skip": None}) == \
        'num-rounds=3 dp=true lr=1e-3 run-dir="/tmp/a b"'
