//! Runnable examples for deploykit live in `examples/`; this crate's doctests also compile and
//! run the README's library snippet.
#![doc = include_str!("../../README.md")]
