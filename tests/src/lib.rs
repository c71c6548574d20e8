//! Host-side integration tests for pvkit. The tests live in `tests/tests/`.
