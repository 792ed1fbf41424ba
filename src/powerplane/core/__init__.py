"""Units, sign conventions, clock, entity addresses and errors shared by every layer."""
