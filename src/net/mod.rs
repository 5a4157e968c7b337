//! TODO: net (being written).
