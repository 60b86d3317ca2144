"""Everything that runs inside one trial; plain functions, usable without Ray."""

import logging

# bitsandbytes tries to fetch an optional CPU kernel from the Hugging Face hub and warns in every process
# when it can't (always, offline); its built-in CPU path is used either way. Set before anything imports it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
