"""Search spaces: named ones (`named.py`) and ones declared inline in a sweep YAML (`inline.py`)."""

from search_spaces.inline import candidate_values, grid_size, space_from_yaml
from search_spaces.named import SPACES

__all__ = ["SPACES", "candidate_values", "grid_size", "space_from_yaml"]
