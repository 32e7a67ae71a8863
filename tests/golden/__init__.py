"""Golden runs: published runs of every format, kept so that later versions stay able to
read (and, for the current format, re-execute) them. See README.md."""
