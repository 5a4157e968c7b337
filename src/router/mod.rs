//! TODO: router (being written).
