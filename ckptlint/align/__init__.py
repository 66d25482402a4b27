"""Alignment: which target tensor comes from which reference tensor (by maps, names, naming
schemes, suffixes, content), the transfer scope, and what is left on either side."""
