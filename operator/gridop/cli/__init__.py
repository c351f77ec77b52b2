"""gridctl: the user CLI (also the kubectl plugin `kubectl grid`)."""
