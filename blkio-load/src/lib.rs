//! A fio-like load generator on libblkio (crate `blkio`, its
//! virtio-blk-vhost-user driver): the same userspace virtio-blk driver QEMU's
//! `blkio` block driver uses, speaking vhost-user to any vhost-user-blk
//! backend's socket, with no VM.
//!
//! Each queue runs on its own thread (fio's numjobs, one vCPU each) and keeps
//! `iodepth` requests in flight; when `do_io` returns no completion, the
//! thread sleeps in poll(2) on the queue's completion fd, which is the
//! vring's call eventfd, so it is woken by exactly the signals the backend
//! sends, as a guest is by its interrupt (or busy-polls with `--poll`).
//! Every read is checked ([`check`]), and the report gives IOPS,
//! completions per wake-up and latency percentiles ([`load::Report`]).
//!
//! Modules: [`cli`] (the command line), [`check`] (what a block should
//! hold), [`io`] (a libblkio queue and its buffers: the crate's only
//! `unsafe` code), [`load`] (the threads and the report).

pub mod check;
pub mod cli;
pub mod io;
pub mod load;
