"""The checker's parsers: the pw_sptes dump (text, or columns) and the kvmmmu events (text, or a binary
trace.dat). Pure: they read bytes and text that files.py hands them."""
