//! TODO: cluster (being written).
