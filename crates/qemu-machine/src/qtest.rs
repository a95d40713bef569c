//! The qtest protocol.
