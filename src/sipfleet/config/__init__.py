"""Node configuration (pydantic models + TOML loading)."""

from sipfleet.config.load import ConfigError, config_from_dict, load_config
from sipfleet.config.model import Config

__all__ = ["Config", "ConfigError", "config_from_dict", "load_config"]
