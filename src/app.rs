//! TODO: App handle.
