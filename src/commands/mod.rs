//! One module per subcommand: its arguments and how it calls the stages.

pub mod accuracy;
pub mod build;
pub mod calibrate;
pub mod clean;
pub mod export;
pub mod generate;
pub mod generate_remote;
pub mod generate_shared;
pub mod inspect;
pub mod lint;
pub mod package;
pub mod perf_data;
pub mod profile;
pub mod serve;
pub mod stop;
