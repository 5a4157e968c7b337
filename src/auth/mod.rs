//! TODO: auth (being written).
