"""HTTP admin API: `start_api(config, store)` for `sipmask serve`, `create_app` for tests."""

from sipmask.api.app import CdrSource, cdrs_from_log, create_app, start_api

__all__ = ["CdrSource", "cdrs_from_log", "create_app", "start_api"]
