"""The fast path: the reference checker's PASS on numpy columns, or nothing (README.md, "Two checkers,
one verdict")."""
