"""The one place the trainer imports the RSPC method from.

TEMPORARY fallback to a local shim until ``timm_rspc.method`` is merged; on merge this file becomes a plain re-export.
"""
try:
    from timm_rspc.method import add_rspc_args, create_rspc_task  # noqa: F401
except ImportError:  # pragma: no cover - removed when the method branch lands
    from ._method_shim import add_rspc_args, create_rspc_task  # noqa: F401
