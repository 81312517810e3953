//! `containerd-shim-lightvm-v1`: containerd's shim v2 for runtime
//! `io.containerd.lightvm.v1`. containerd runs it (`start`, `delete`, then as the
//! task service on a ttrpc socket); each task is an app image booted as a Xen PV guest
//! through the chaos library. See the README's "containerd and Kubernetes".

mod guest;
mod holder;
mod podnet;
mod rootfs;
mod service;
mod spec;

fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some(holder::HOLD) {
        holder::hold(&args.next().unwrap_or_default());
    }
    containerd_shim::run::<service::Manager>(
        service::RUNTIME,
        Some(containerd_shim::Config {
            // The shim waits for its own children (the holders, `ip` and `tc`): a reaper
            // thread would take their exit statuses from under `Command::output`.
            no_reaper: true,
            no_sub_reaper: true,
            ..Default::default()
        }),
    );
}
