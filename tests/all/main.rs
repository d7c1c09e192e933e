//! Black-box tests of hasp: the real `hasp` binary, real directories, real
//! processes. One test binary, one module per area.

#[path = "../etcd.rs"]
mod etcd;
#[path = "../http_client.rs"]
mod http_client;
mod support;

mod api;
mod bad_input;
mod cli;
mod embed;
mod etcd_harness;
mod etcd_store;
mod file_lock;
mod hierarchy;
mod lease;
mod lease_cli;
mod node;
mod plugin;
mod race;
mod recovery;
mod reliability;
mod run;
mod runtime;
mod serve;
mod tokens;
mod wasmtime_cli;
