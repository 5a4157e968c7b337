//! TODO: topology (being written).
