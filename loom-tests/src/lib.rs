//! loom models of rcu-defer live in `tests/`; this library is empty.
