"""The control package: the `safecity` command line, the local launcher, verify and scoring."""
