"""Hypothesis strategies shared by the codec tests."""

from __future__ import annotations

from hypothesis import strategies as st

# A command or request name: no space (it ends the name) and no NUL.
NAMES = st.binary(min_size=1, max_size=40).filter(lambda b: b" " not in b and b"\0" not in b)
