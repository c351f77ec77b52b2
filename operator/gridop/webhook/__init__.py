"""The CRDs' conversion webhook: the HTTPS server every operator replica runs, and its certificate."""

from .certs import Material, MountedCertificate, SelfManagedCertificate
from .server import ConversionWebhook, WebhookError, review_response

__all__ = ["ConversionWebhook", "Material", "MountedCertificate", "SelfManagedCertificate", "WebhookError", "review_response"]
