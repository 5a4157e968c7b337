//! TODO: protocol (being written).
