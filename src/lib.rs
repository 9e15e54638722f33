//! The fluxbuild pipeline: each stage is a module with a narrow input and output.
//! checkpoint -> graphs (`export`) -> engines (`fluxbuild-engines`) -> repository (`package`),
//! plus local generation (`generate`) and serving (`serve`, `client`).

pub mod accuracy;
pub mod calibrate;
pub mod client;
pub mod commands;
pub mod deploy;
pub mod export;
pub mod generate;
pub mod output;
pub mod package;
pub mod pid_file;
pub mod pipeline_files;
pub mod runtime;
pub mod serve;
pub mod server_process;
pub mod supervise;
