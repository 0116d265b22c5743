"""Configuration: the schema of ``monitor.yaml`` (:mod:`.schema`), its loader (:mod:`.load`).

The bottom of the monitor: every other package may import from here, and this
package imports nothing above it.
"""

from monitor.config.load import interpolate_env, load_config
from monitor.config.schema import (
    CONFIG_VERSION,
    DEFAULT_DATABASE,
    CostsConfig,
    DaemonConfig,
    DriftConfig,
    DriftThresholds,
    EndpointConfig,
    FamilyConfig,
    FinetuneConfig,
    Interval,
    JobConfig,
    ModelConfig,
    MonitorConfig,
    PricingConfig,
    ReferenceConfig,
    RegressionConfig,
    ScheduleConfig,
    WatchConfig,
    WebhookEndpointConfig,
    WebhooksConfig,
)

__all__ = [
    "CONFIG_VERSION",
    "DEFAULT_DATABASE",
    "CostsConfig",
    "DaemonConfig",
    "DriftConfig",
    "DriftThresholds",
    "EndpointConfig",
    "FamilyConfig",
    "FinetuneConfig",
    "Interval",
    "JobConfig",
    "ModelConfig",
    "MonitorConfig",
    "PricingConfig",
    "ReferenceConfig",
    "RegressionConfig",
    "ScheduleConfig",
    "WatchConfig",
    "WebhookEndpointConfig",
    "WebhooksConfig",
    "interpolate_env",
    "load_config",
]
