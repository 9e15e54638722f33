//! Deployment helpers: what load generators and orchestration need from a packaged repository.

pub mod pbtxt;
pub mod perf_data;
