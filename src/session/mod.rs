//! TODO: session (being written).
