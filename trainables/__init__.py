"""Everything that runs inside one trial; plain functions, usable without Ray."""

import logging
import warnings

# bitsandbytes tries to fetch an optional CPU kernel from the Hugging Face hub and warns in every process
# when it can't (always, offline); its built-in CPU path is used either way. Set before anything imports it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# Deprecations raised inside the libraries' own code, which no setting of ours reaches: TRL 1.16 and peft read
# transformers 5's renamed gradient-checkpointing fields, and bitsandbytes' CPU path scripts with torch.jit.
# Only these are silenced; any other deprecation still shows.
LIBRARY_DEPRECATIONS = (
    (FutureWarning, r"`(is_)?gradient_checkpointing` is deprecated"),
    (DeprecationWarning, r"`torch\.jit\.script_method` is deprecated"),
)
for _category, _message in LIBRARY_DEPRECATIONS:
    warnings.filterwarnings("ignore", message=_message, category=_category)
