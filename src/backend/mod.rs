//! TODO: backend (being written).
