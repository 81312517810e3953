//! `containerd-shim-lightvm-v1`: containerd's shim v2 for runtime
//! `io.containerd.lightvm.v1`.

fn main() {}
