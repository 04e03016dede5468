//! Integration tests, as one binary: the real daemon against fake upstreams, read back over HTTP.

mod cli;
mod daemon;
mod fluximage;
mod rules;
mod support;
