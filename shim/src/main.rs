//! `containerd-shim-lightvm-v1`: containerd's shim v2 for runtime
//! `io.containerd.lightvm.v1`.

// Not used until the task service starts guests in a pod's network namespace.
#[allow(dead_code)]
mod podnet;

fn main() {}
