"""Split layers. The mode names live here, free of imports, so the command-line parser can list
them without loading torch."""

SPLIT_MODES = ("kels", "wels")      # kernel-level (whole filters, has a slim network), weight-level
EVOLVE_MODES = ("rand", "zero")     # how the reset hypothesis is re-drawn each generation
