"""Reference zoo of sequence mixers, each exposing the operator it applies (see README)."""
