"""The only package that talks to MLflow: a store of experiments, and runs that take params, metrics and
artifacts in this benchmark's formats (JSON, CSV, npy, safetensors — never pickles)."""

from tracking.store import (
    DEFAULT_TRACKING_URI,
    Run,
    RunRecord,
    Store,
    StoreError,
    hold_signals_in,
    interrupt,
    resolve_tracking_uri,
)

__all__ = ["DEFAULT_TRACKING_URI", "Run", "RunRecord", "Store", "StoreError", "hold_signals_in", "interrupt",
           "resolve_tracking_uri"]
