"""Session JWTs: signing keys (with rotation), issue and verify."""

from .tokens import Keyring, SigningKeyError, TokenError, generate_signing_key, issue_session_token, verify_token

__all__ = ["Keyring", "SigningKeyError", "TokenError", "generate_signing_key", "issue_session_token", "verify_token"]
