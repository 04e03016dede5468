//! creditwatch: a Prometheus exporter and alerting daemon that forecasts when paid-API credits run out.

pub mod alerting;
pub mod app;
pub mod backfill;
pub mod clock;
pub mod config;
pub mod demo;
pub mod forecast;
#[cfg(test)]
mod fuzz;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod once;
pub mod poller;
pub mod providers;
pub mod proxy;
pub mod runbook;
pub mod secret;
pub mod server;
pub mod smallmap;
pub mod state;
pub mod status;
pub mod store;
pub mod web;
