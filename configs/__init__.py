"""The shipped presets (YAML files beside this one), installed with the toolkit so that `--config NAME` finds them
from any directory; see experiments.config.shipped_presets."""
