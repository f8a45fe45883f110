"""`sdlite.check`, the import path scripts use for golden checks (`from sdlite.check import CheckConfig, check`);
the code lives in sdlite/quality/."""

from __future__ import annotations

from sdlite.quality.config import DEFAULT_MAX_CHANGED, DEFAULT_TOLERANCE, CheckConfig
from sdlite.quality.golden import CheckReport, CheckResult, check, compare, passes, write_heatmap, write_junit

__all__ = [
    "DEFAULT_MAX_CHANGED",
    "DEFAULT_TOLERANCE",
    "CheckConfig",
    "CheckReport",
    "CheckResult",
    "check",
    "compare",
    "passes",
    "write_heatmap",
    "write_junit",
]
