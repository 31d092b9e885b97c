"""Moved to `cosmicai.local_store`; kept only until tune.py imports it from there."""

from cosmicai.local_store import LocalS3Mirror, MirrorClaims, cosmicai_home

__all__ = ["LocalS3Mirror", "MirrorClaims", "cosmicai_home"]
