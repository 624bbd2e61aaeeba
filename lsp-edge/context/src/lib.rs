//! Context engine.
