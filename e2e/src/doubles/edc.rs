//! Placeholder: the double is being written.
