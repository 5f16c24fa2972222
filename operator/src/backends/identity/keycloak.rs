//! Placeholder: the real client is being written.
