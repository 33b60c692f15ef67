//! Nearstore end-to-end tests: one test binary, a module per area.

mod auto;
mod cli;
mod compare;
mod crash;
mod device;
mod dict_groups;
mod differential;
mod disk_full;
mod fanout;
mod fuzz;
mod gateway;
mod hostile;
mod hot_tier;
mod kernel_dev;
mod kernels;
mod load;
mod parallel;
mod python;
mod remote;
mod sql;
mod sql_props;
mod sql_pushdown;
mod support;
mod tenants;
mod tpch;
mod transport;
