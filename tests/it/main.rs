//! Integration tests, as one binary: the real daemon against fake upstreams, read back over HTTP.

mod alerting;
mod browser;
mod cli;
mod daemon;
mod demo;
mod deploy;
mod durability;
mod external;
mod faults;
mod floow;
mod fluximage;
mod fluxrouter;
mod forecast;
mod grafana;
mod hostile;
mod http_json;
mod imagerouter;
mod prometheus;
mod reload;
mod rules;
mod secrets;
mod status_page;
mod support;
mod upstream;
mod web;
