//! TODO: config (being written).
