"""TLS and mutual TLS: certificates made on the fly, the server on loopback."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from steering_proto.v1 import steering_pb2 as pb
from steering_proto.v1 import steering_pb2_grpc as pb_grpc
from tests.server.harness import ServerThread

Pair = tuple[bytes, bytes]  # (certificate PEM, key PEM)


def _cert(name: str, issuer: Pair | None = None, *, ca: bool = False) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_cert = x509.load_pem_x509_certificate(issuer[0]) if issuer else None
    issuer_key = serialization.load_pem_private_key(issuer[1], None) if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        alt = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pair | Path]:
    root = tmp_path_factory.mktemp("pki")
    ca, other_ca = _cert("test CA", ca=True), _cert("other CA", ca=True)
    server = _cert("localhost", ca)
    files = {}
    for name, (cert, key) in {"ca": ca, "server": server}.items():
        (root / f"{name}.crt").write_bytes(cert)
        (root / f"{name}.key").write_bytes(key)
        files[name] = root / f"{name}.crt"
    return {
        "ca": ca,
        "client": _cert("client", ca),
        "stranger": _cert("stranger", other_ca),
        "server_cert": files["server"],
        "server_key": root / "server.key",
        "ca_file": files["ca"],
    }


@pytest.fixture(scope="module")
def mtls_server(model_folders: dict[str, Path], pki: dict) -> Iterator[ServerThread]:
    srv = ServerThread(
        model=model_folders["gemma2"],
        tls_cert=pki["server_cert"],
        tls_key=pki["server_key"],
        tls_client_ca=pki["ca_file"],
    )
    yield srv
    srv.close()


def _describe(
    srv: ServerThread, credentials: grpc.ChannelCredentials | None
) -> pb.DescribeModelResponse:
    target = f"localhost:{srv.app.port}"
    channel = (
        grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    )
    with channel:
        return pb_grpc.SteeringServiceStub(channel).DescribeModel(
            pb.DescribeModelRequest(), timeout=5
        )


def test_client_with_a_certificate_from_the_ca_is_served(
    mtls_server: ServerThread, pki: dict
) -> None:
    cert, key = pki["client"]
    creds = grpc.ssl_channel_credentials(pki["ca"][0], private_key=key, certificate_chain=cert)
    assert _describe(mtls_server, creds).model.num_layers == 4


@pytest.mark.parametrize("who", ["no certificate", "wrong CA", "plaintext"])
def test_other_clients_fail_the_handshake(mtls_server: ServerThread, pki: dict, who: str) -> None:
    if who == "plaintext":
        creds = None
    elif who == "no certificate":
        creds = grpc.ssl_channel_credentials(pki["ca"][0])
    else:
        cert, key = pki["stranger"]
        creds = grpc.ssl_channel_credentials(pki["ca"][0], private_key=key, certificate_chain=cert)
    with pytest.raises(grpc.RpcError) as err:
        _describe(mtls_server, creds)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
