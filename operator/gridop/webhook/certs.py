"""The conversion webhook's TLS: a certificate the operator issues, keeps, renews and injects.

Every operator replica serves the webhook (the API server reaches whichever is ready), so the
certificate lives in one Secret in the operator's namespace, in the layout cert-manager writes
(`tls.crt`, `tls.key`, `ca.crt`; plus `ca.key`, which only the operator reads). The first replica
to start creates it; a replica that finds the serving certificate in its last third of validity
(or naming other DNS names) issues a new one from the same CA. The CA's certificate is the CRDs'
`caBundle`, so renewing the serving certificate never touches the CRDs. Deleting the Secret makes
a new CA, injected at once.

With cert-manager (`webhook.certManager.enabled`), the certificate arrives as files in a mounted
Secret and cert-manager's CA injector writes the `caBundle`; the operator only reloads the files.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import logging
import os
import pathlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..kube import AlreadyExists, Conflict, KubeClient, KubeError, NotFound, resources

log = logging.getLogger(__name__)
CA_VALIDITY = datetime.timedelta(days=3650)


@dataclasses.dataclass(frozen=True)
class Material:
    """PEM bytes: what a TLS server needs, and the CA that clients trust."""

    cert: bytes
    key: bytes
    ca: bytes

    def not_after(self) -> datetime.datetime:
        return x509.load_pem_x509_certificate(self.cert).not_valid_after_utc

    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert).serial_number


def dns_names(service: str, namespace: str) -> list[str]:
    """The names the API server may use for a Service (it uses `<service>.<namespace>.svc`)."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def issue_ca(common_name: str, now: datetime.datetime) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def issue_serving(ca_cert: bytes, ca_key: bytes, names: list[str], now: datetime.datetime,
                  validity: datetime.timedelta) -> Material:
    ca = x509.load_pem_x509_certificate(ca_cert)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + validity)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(signer, hashes.SHA256()))
    return Material(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key), ca_cert)


def renewal_due(material: Material, names: list[str], now: datetime.datetime, validity: datetime.timedelta) -> str | None:
    """Why the serving certificate must be issued again (None: it is good)."""
    cert = x509.load_pem_x509_certificate(material.cert)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        san = []
    if sorted(san) != sorted(names):
        return f"it names {', '.join(san) or 'nothing'}, not {names[2]}"
    lifetime = min(validity, cert.not_valid_after_utc - cert.not_valid_before_utc)
    if cert.not_valid_after_utc - now < lifetime / 3:
        return f"it expires at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _field(secret: dict[str, Any], key: str) -> bytes:
    return base64.b64decode((secret.get("data") or {}).get(key) or "")


class SelfManagedCertificate:
    """The certificate in `<secret>`, created or renewed by whichever replica sees the need first."""

    def __init__(self, client: KubeClient, namespace: str, secret: str, service: str, validity_seconds: float,
                 crds: list[str]):
        self.client, self.namespace, self.secret = client, namespace, secret
        self.names = dns_names(service, namespace)
        self.validity = datetime.timedelta(seconds=validity_seconds)
        self.crds = crds

    async def current(self) -> Material:
        """The certificate to serve: the Secret's, issued (or renewed) first when it must be."""
        for _ in range(5):  # another replica's concurrent write is a 409: read theirs and look again
            now = datetime.datetime.now(tz=datetime.UTC)
            secret = await self.client.get(resources.SECRETS, self.secret, self.namespace)
            if secret is None:
                ca_cert, ca_key = await asyncio.to_thread(issue_ca, f"gridop-webhook-ca.{self.namespace}", now)
                material = await asyncio.to_thread(issue_serving, ca_cert, ca_key, self.names, now, self.validity)
                try:
                    await self.client.create(resources.SECRETS, self._secret(material, ca_key, None), self.namespace)
                except AlreadyExists:
                    continue
                log.info("issued the conversion webhook's CA and certificate (Secret %s, valid until %s)",
                         self.secret, material.not_after())
                return material
            material = Material(_field(secret, "tls.crt"), _field(secret, "tls.key"), _field(secret, "ca.crt"))
            ca_key = _field(secret, "ca.key")
            try:
                why = renewal_due(material, self.names, now, self.validity)
            except ValueError:
                why = "it cannot be read"
            if why is None:
                return material
            try:
                renewed = await asyncio.to_thread(issue_serving, material.ca, ca_key, self.names, now, self.validity)
            except ValueError as exc:
                raise ValueError(f"Secret {self.namespace}/{self.secret} holds no usable CA (ca.crt, ca.key: {exc}); "
                                 "delete it and the operator makes a new CA and certificate") from exc
            try:
                # The resourceVersion makes the patch conditional: a replica that renewed first wins.
                await self.client.patch(resources.SECRETS, self.secret,
                                        self._secret(renewed, ca_key, secret["metadata"]["resourceVersion"]), self.namespace)
            except Conflict:
                continue
            log.info("renewed the conversion webhook's certificate (%s; valid until %s)", why, renewed.not_after())
            return renewed
        raise RuntimeError(f"Secret {self.namespace}/{self.secret} keeps changing under this replica")

    def _secret(self, material: Material, ca_key: bytes, resource_version: str | None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.secret, "namespace": self.namespace,
                                "labels": {"app.kubernetes.io/name": "gridop", "app.kubernetes.io/component": "webhook"}}
        if resource_version is not None:
            meta["resourceVersion"] = resource_version
        return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": meta, "data": {
            "tls.crt": _b64(material.cert), "tls.key": _b64(material.key), "ca.crt": _b64(material.ca), "ca.key": _b64(ca_key)}}

    async def inject(self, ca: bytes) -> None:
        """Make the CA each CRD's caBundle (one read per CRD; a patch only where it differs)."""
        bundle = _b64(ca)
        for name in self.crds:
            try:
                crd = await self.client.get(resources.CRDS, name)
                if crd is None:
                    log.warning("CRD %s is not installed: cannot give it the webhook's CA", name)
                    continue
                webhook = ((crd.get("spec") or {}).get("conversion") or {}).get("webhook") or {}
                if (webhook.get("clientConfig") or {}).get("caBundle") == bundle:
                    continue
                await self.client.patch(resources.CRDS, name, {"spec": {"conversion": {"webhook": {"clientConfig": {
                    "caBundle": bundle}}}}})
                log.info("gave CRD %s the conversion webhook's CA", name)
            except NotFound:
                continue
            except KubeError as exc:
                log.warning("cannot give CRD %s the webhook's CA (%s): %s", name, exc.status, exc)


class MountedCertificate:
    """tls.crt and tls.key in a directory (cert-manager's Secret, mounted): read when they change."""

    def __init__(self, directory: str):
        self.directory = pathlib.Path(directory)

    def _stamp(self) -> tuple[float, float]:
        return (os.stat(self.directory / "tls.crt").st_mtime, os.stat(self.directory / "tls.key").st_mtime)

    async def current(self) -> Material:
        def read() -> Material:
            ca = self.directory / "ca.crt"
            return Material((self.directory / "tls.crt").read_bytes(), (self.directory / "tls.key").read_bytes(),
                            ca.read_bytes() if ca.exists() else b"")
        return await asyncio.to_thread(read)

    async def inject(self, ca: bytes) -> None:
        return None  # cert-manager's CA injector writes the caBundle
